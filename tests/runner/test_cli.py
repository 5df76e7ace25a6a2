"""The CLI against a real database: each command's normal and error paths (click's runner)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from click.testing import CliRunner, Result

from conveyor.cli import main

Conn = psycopg.Connection[dict[str, Any]]

WORKFLOW = {
    "slug": "greet-contact",
    "name": "Greet a new contact",
    "description": "Remembers who joined.",
    "trigger": {"event": "crm.contact.created"},
    "steps": [
        {
            "id": "is-lead",
            "if": {"field": "trigger.payload.new.type", "op": "equals", "value": "lead"},
            "then": "remember",
            "else": None,
        },
        {"id": "remember", "set": {"name": "{{trigger.payload.new.name}}"}},
    ],
}


@pytest.fixture
def workflow_file(tmp_path: Path) -> Path:
    path = tmp_path / "greet.yaml"
    path.write_text(yaml.safe_dump(WORKFLOW, sort_keys=False))
    return path


def test_apply_list_show_export(cli: Any, workflow_file: Path) -> None:
    applied = cli("workflows", "apply", "-f", str(workflow_file))
    assert applied.exit_code == 0, applied.output
    assert "published  greet-contact version 1" in applied.output
    listed = cli("workflows", "list", "--json")
    assert [(w["slug"], w["version"], w["trigger"]) for w in json.loads(listed.output)] == [
        ("greet-contact", 1, "crm.contact.created")
    ]
    shown = cli("workflows", "show", "greet-contact")
    assert shown.exit_code == 0 and "is-lead" in shown.output and "remember" in shown.output
    exported = cli("workflows", "export", "greet-contact", "--format", "json")
    assert json.loads(exported.output)["steps"][1]["id"] == "remember"


def test_apply_dry_run_validates_without_publishing(cli: Any, workflow_file: Path, conn: Conn) -> None:
    result = cli("workflows", "apply", "-f", str(workflow_file), "--dry-run")
    assert result.exit_code == 0 and "valid      greet-contact" in result.output
    assert conn.execute("select count(*) as n from conveyor.workflows").fetchone() == {"n": 0}


def test_apply_reports_every_problem_with_its_path(cli: Any, tmp_path: Path, conn: Conn) -> None:
    broken = {**WORKFLOW, "steps": [{"id": "x", "action": "email.sned", "with": {}}]}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    result = cli("workflows", "apply", "-f", str(path))
    assert result.exit_code == 1
    assert result.output.startswith("error: ")
    assert "steps[0]" in result.output
    assert conn.execute("select count(*) as n from conveyor.workflows").fetchone() == {"n": 0}


def test_unreadable_document_is_one_clear_line(cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("slug: [unclosed")
    result = cli("workflows", "apply", "-f", str(path))
    assert result.exit_code == 1 and "not valid YAML or JSON" in result.output


def test_activate_deactivate_delete(cli: Any, workflow_file: Path) -> None:
    cli("workflows", "apply", "-f", str(workflow_file))
    assert cli("workflows", "deactivate", "greet-contact").output.strip() == "greet-contact: inactive"
    assert cli("workflows", "activate", "greet-contact").output.strip() == "greet-contact: active"
    assert cli("workflows", "delete", "greet-contact", "--yes").exit_code == 0
    missing = cli("workflows", "show", "greet-contact")
    assert (
        missing.exit_code == 1
        and 'workflow "greet-contact" does not exist for tenant "acme"' in missing.output
    )


def test_events_emit_list_and_executions(cli: Any, workflow_file: Path, conn: Conn) -> None:
    cli("workflows", "apply", "-f", str(workflow_file))
    emitted = cli(
        "events", "emit", "crm.contact.created", "--payload", '{"new": {"type": "lead", "name": "Ada"}}'
    )
    assert emitted.exit_code == 0, emitted.output
    conn.execute("select conveyor.tick()")
    events = json.loads(cli("events", "list", "--json").output)
    assert [(e["type"], e["executions"]) for e in events] == [("crm.contact.created", 1)]
    executions = json.loads(cli("executions", "list", "--json").output)
    assert [(x["workflow"], x["status"]) for x in executions] == [("greet-contact", "completed")]
    shown = cli("executions", "show", str(executions[0]["id"]), "--json")
    steps = json.loads(shown.output)["steps"]
    assert [s["step"] for s in steps] == ["is-lead", "remember"]
    replayed = cli("events", "replay", str(events[0]["id"]))
    assert replayed.exit_code == 0 and "replay of" in replayed.output
    bad = cli("events", "emit", "not-a-type")
    assert bad.exit_code == 1 and bad.output.startswith("error: ")


def test_other_tenants_execution_is_not_shown(cli: Any, workflow_file: Path, conn: Conn, db_url: str) -> None:
    cli("workflows", "apply", "-f", str(workflow_file))
    cli("events", "emit", "crm.contact.created", "--payload", '{"new": {"type": "lead"}}')
    conn.execute("select conveyor.tick()")
    execution = conn.execute("select execution_id from conveyor.executions").fetchone()
    assert execution is not None
    result = CliRunner().invoke(
        main,
        ["executions", "show", str(execution["execution_id"]), "--tenant", "globex"],
        env={"CONVEYOR_DATABASE_URL": db_url},
    )
    assert result.exit_code == 1 and "does not exist for tenant" in result.output


def test_trigger_and_stats_and_status(cli: Any, tmp_path: Path) -> None:
    manual = {
        "slug": "by-hand",
        "name": "By hand",
        "trigger": {"manual": True},
        "steps": [{"id": "s", "set": {"who": "{{trigger.payload.who}}"}}],
    }
    (tmp_path / "m.json").write_text(json.dumps(manual))
    (tmp_path / "data.json").write_text(json.dumps({"who": "Ada"}))
    assert cli("workflows", "apply", "-f", str(tmp_path / "m.json")).exit_code == 0
    triggered = cli("trigger", "by-hand", "--data", str(tmp_path / "data.json"), "--json")
    assert json.loads(triggered.output)["status"] == "completed"
    stats = json.loads(cli("stats", "--json").output)
    assert [(w["slug"], w["runs"], w["completed"]) for w in stats["workflows"]] == [("by-hand", 1, 1)]
    status = json.loads(cli("status", "--json").output)
    assert status["queue_depth"] == 0 and status["executions_last_hour"] == {"completed": 1}
    missing = cli("trigger", "nope")
    assert missing.exit_code == 1 and 'workflow "nope" does not exist' in missing.output


def test_cancel_waiting_execution(cli: Any, tmp_path: Path) -> None:
    slow = {
        "slug": "slow",
        "name": "Slow",
        "trigger": {"manual": True},
        "steps": [{"id": "wait", "delay": {"for": "1d"}}],
    }
    (tmp_path / "s.json").write_text(json.dumps(slow))
    cli("workflows", "apply", "-f", str(tmp_path / "s.json"))
    execution_id = json.loads(cli("trigger", "slow", "--json").output)["execution_id"]
    assert "cancelled" in cli("executions", "cancel", str(execution_id), "--reason", "testing").output
    shown = json.loads(cli("executions", "show", str(execution_id), "--json").output)
    assert shown["execution"]["status"] == "cancelled"


def test_commands_that_change_things_answer_in_json_too(cli: Any, workflow_file: Path) -> None:
    cli("workflows", "apply", "-f", str(workflow_file))
    assert json.loads(cli("workflows", "deactivate", "greet-contact", "--json").output) == {
        "slug": "greet-contact",
        "active": False,
        "changed": True,
    }
    emitted = json.loads(cli("events", "emit", "crm.contact.created", "--json").output)
    assert emitted["event_type"] == "crm.contact.created" and emitted["event_id"] > 0
    replayed = json.loads(cli("events", "replay", str(emitted["event_id"]), "--json").output)
    assert replayed["replay_of"] == emitted["event_id"]


def test_apply_several_files_at_once(cli: Any, tmp_path: Path) -> None:
    paths = []
    for slug in ("first-flow", "second-flow"):
        path = tmp_path / f"{slug}.yaml"
        path.write_text(yaml.safe_dump({**WORKFLOW, "slug": slug}))
        paths += ["-f", str(path)]
    result = cli("workflows", "apply", *paths, "--json")
    assert result.exit_code == 0, result.output
    assert [(r["slug"], r["version"]) for r in json.loads(result.output)] == [
        ("first-flow", 1),
        ("second-flow", 1),
    ]


# ---------------------------------------------------------------------------------------
# documents too deep or too large to load: one line naming the file and the limit


def deep_condition_document(levels: int) -> str:
    """JSON text of WORKFLOW whose first condition is wrapped in `levels` "not"s
    (json.dumps itself cannot write one this deep)."""
    head = json.dumps({**WORKFLOW, "steps": [{**WORKFLOW["steps"][0], "if": None}, WORKFLOW["steps"][1]]})
    leaf = json.dumps(WORKFLOW["steps"][0]["if"])
    return head.replace('"if": null', '"if": ' + '{"not": ' * levels + leaf + "}" * levels)


def one_error_line(result: Result) -> str:
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.mark.parametrize("command", [["workflows", "apply", "-f"], ["workflows", "apply", "--dry-run", "-f"]])
def test_a_document_too_deep_to_load_is_one_line_naming_file_and_limit(
    cli: Any, tmp_path: Path, conn: Conn, command: list[str]
) -> None:
    # Before: depth 500 ended in PyYAML's RecursionError traceback.
    path = tmp_path / "deep.json"
    path.write_text(deep_condition_document(500))
    line = one_error_line(cli(*command, str(path)))
    assert (
        line == f"error: {path}: line 1: nesting depth 65 exceeds the limit 64 (CONVEYOR_MAX_DOCUMENT_DEPTH)"
    )
    assert conn.execute("select count(*) as n from conveyor.workflows").fetchone() == {"n": 0}


def test_deep_yaml_is_refused_with_its_line(cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("slug: x\nnested:\n" + "".join("  " * i + "- \n" for i in range(1, 100)))
    line = one_error_line(cli("workflows", "apply", "-f", str(path)))
    assert line.startswith(f"error: {path}: line ") and line.endswith(
        "nesting depth 65 exceeds the limit 64 (CONVEYOR_MAX_DOCUMENT_DEPTH)"
    )


def test_within_the_cli_limit_the_engine_names_the_path(cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text(deep_condition_document(40))
    result = cli("workflows", "apply", "-f", str(path))
    assert result.exit_code == 1
    assert "steps[0].if" + ".not" * 29 + ": nesting depth 33 exceeds the limit 32" in result.output


def test_a_file_over_the_size_limit_is_not_parsed(cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump({**WORKFLOW, "description": "x" * 2_000_000}))
    size = path.stat().st_size
    line = one_error_line(cli("workflows", "apply", "-f", str(path)))
    assert line == f"error: {path}: {size} bytes exceeds the limit 1048576 (CONVEYOR_MAX_DOCUMENT_BYTES)"


def test_a_large_json_document_within_the_limit_is_read_quickly(cli: Any, tmp_path: Path) -> None:
    # 950 KB of small steps: PyYAML's pure-Python loader took 14 s; JSON is read as JSON.
    steps = [{"id": f"s{i}", "set": {"n": i}} for i in range(25_000)]
    path = tmp_path / "long.json"
    path.write_text(json.dumps({**WORKFLOW, "steps": steps}))
    assert path.stat().st_size < 1_048_576
    started = time.monotonic()
    result = cli("workflows", "apply", "-f", str(path))
    assert time.monotonic() - started < 5
    assert result.exit_code == 1
    assert "exceeds the limit 262144 (setting conveyor.max_document_bytes)" in result.output


def test_aliases_that_expand_past_the_limit_are_refused(cli: Any, tmp_path: Path) -> None:
    laughs = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    laughs += [f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]" for p, c in zip("abcdef", "bcdefg", strict=True)]
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join(laughs) + "\n")
    line = one_error_line(cli("workflows", "apply", "-f", str(path)))
    assert "the document expands to more than 1048576 values" in line and line.startswith(
        f"error: {path}: line "
    )


def test_dry_run_event_file_and_emit_payload_are_depth_safe(
    cli: Any, tmp_path: Path, workflow_file: Path
) -> None:
    event = tmp_path / "event.json"
    event.write_text('{"payload": ' + "[" * 5000 + "]" * 5000 + "}")
    line = one_error_line(cli("dry-run", "-f", str(workflow_file), "--event", str(event)))
    assert (
        line == f"error: {event}: line 1: nesting depth 65 exceeds the limit 64 (CONVEYOR_MAX_DOCUMENT_DEPTH)"
    )
    line = one_error_line(
        cli("events", "emit", "crm.contact.created", "--payload", "[" * 100_000 + "]" * 100_000)
    )
    assert line == "error: --payload is nested too deeply to read"


def test_the_cli_document_limits_are_settings(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "deep.json"
    path.write_text(deep_condition_document(70))
    monkeypatch.setenv("CONVEYOR_MAX_DOCUMENT_DEPTH", "100")
    result = cli("workflows", "apply", "-f", str(path))
    assert "nesting depth 33 exceeds the limit 32" in result.output  # the engine's limit now speaks
    monkeypatch.setenv("CONVEYOR_MAX_DOCUMENT_BYTES", "100")
    line = one_error_line(cli("workflows", "apply", "-f", str(path)))
    assert line.endswith("bytes exceeds the limit 100 (CONVEYOR_MAX_DOCUMENT_BYTES)")
