"""Honest answers from the CLI: an unknown tenant is an error, `--since` is validated,
`trigger` takes inline data and exits non-zero when its run fails, tables are not cut to
80 columns when captured (the `cli` fixture: tenants acme and globex)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg

Conn = psycopg.Connection[dict[str, Any]]


def test_an_unknown_tenant_is_an_error_not_an_empty_list(cli: Any) -> None:
    for args in (("workflows", "list"), ("executions", "list"), ("events", "list"), ("stats",), ("usage",)):
        nobody = cli(*args, "--tenant", "nobody")
        assert nobody.exit_code == 1, (args, nobody.output)
        assert 'tenant "nobody" does not exist' in nobody.output and "(none)" not in nobody.output
    assert cli("workflows", "list", "--tenant", "globex").output.strip() == "(none)"


def test_since_is_validated_naming_the_option_and_its_forms(cli: Any) -> None:
    for args in (("executions", "list", "--since", "yesterday"), ("stats", "--since", "7 fortnights")):
        bad = cli(*args)
        assert bad.exit_code == 1
        assert "--since" in bad.output and "30m, 24h, 7d, 2w" in bad.output
        assert "Traceback" not in bad.output
    for since in ("30m", "24h", "7 days", "2w"):
        assert cli("executions", "list", "--since", since).exit_code == 0, since


def manual(cli: Any, tmp_path: Path, slug: str, steps: list[dict[str, Any]]) -> None:
    path = tmp_path / f"{slug}.json"
    path.write_text(json.dumps({"slug": slug, "name": slug, "trigger": {"manual": True}, "steps": steps}))
    applied = cli("workflows", "apply", "-f", str(path))
    assert applied.exit_code == 0, applied.output


def test_trigger_takes_inline_data_and_fails_when_its_run_fails(cli: Any, conn: Conn, tmp_path: Path) -> None:
    manual(cli, tmp_path, "greet", [{"id": "s", "set": {"who": "{{trigger.payload.who}}"}}])
    inline = cli("trigger", "greet", "--data", '{"who": "Ada"}', "--json")
    assert inline.exit_code == 0, inline.output
    run = json.loads(inline.output)
    assert run["status"] == "completed"
    row = conn.execute(
        "select vars from conveyor.executions where execution_id = %s", (run["execution_id"],)
    ).fetchone()
    assert row is not None and row["vars"]["who"] == "Ada"
    assert cli("trigger", "greet", "--data", "[1]").exit_code == 1
    nofile = cli("trigger", "greet", "--data", "missing.json")
    assert nofile.exit_code == 1 and "no such file" in nofile.output

    conn.execute("create table public.things (id bigint primary key, tenant_id text)")
    assert cli("entities", "add", "thing", "public.things").exit_code == 0
    # a row id that is not a bigint: the data step fails when it runs
    manual(cli, tmp_path, "doomed", [{"id": "load", "data": {"op": "lookup", "entity": "thing", "id": "x"}}])
    failed = cli("trigger", "doomed")
    assert failed.exit_code == 2, failed.output
    assert "execution" in failed.output and "failed" in failed.output


def test_tables_are_not_cut_to_80_columns_when_captured(cli: Any, tmp_path: Path) -> None:
    slug = "a-workflow-with-a-long-slug-" + "x" * 60
    manual(cli, tmp_path, slug, [{"id": "s", "set": {"a": "1"}}])
    listed = cli("workflows", "list")
    assert listed.exit_code == 0
    assert slug in listed.output
    assert max(len(line) for line in listed.output.splitlines()) > 80


def test_apply_a_directory_and_an_unchanged_document_publishes_nothing(
    cli: Any, conn: Conn, tmp_path: Path
) -> None:
    folder = tmp_path / "flows"
    folder.mkdir()
    for slug in ("one", "two"):
        document = {
            "slug": slug,
            "name": slug,
            "trigger": {"manual": True},
            "steps": [{"id": "s", "set": {"a": "1"}}],
        }
        (folder / f"{slug}.json").write_text(json.dumps(document))
    (folder / "notes.txt").write_text("not a workflow")
    first = cli("workflows", "apply", "-f", str(folder))
    assert first.exit_code == 0, first.output
    assert "published  one version 1" in first.output and "published  two version 1" in first.output
    again = cli("workflows", "apply", "-f", str(folder), "--json")
    assert [(r["slug"], r["result"], r["version"]) for r in json.loads(again.output)] == [
        ("one", "unchanged", 1),
        ("two", "unchanged", 1),
    ]
    assert conn.execute("select count(*) as n from conveyor.workflow_versions").fetchone() == {"n": 2}
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = cli("workflows", "apply", "-f", str(empty))
    assert nothing.exit_code == 1 and "no workflow documents" in nothing.output


def test_a_second_retry_of_the_same_failed_execution_is_refused(cli: Any, conn: Conn, tmp_path: Path) -> None:
    conn.execute("create table public.items (id bigint primary key, tenant_id text)")
    assert cli("entities", "add", "item", "public.items").exit_code == 0
    manual(cli, tmp_path, "fails", [{"id": "load", "data": {"op": "lookup", "entity": "item", "id": "x"}}])
    # (the runner mixes stderr, where the failure is reported, into output)
    failed = json.JSONDecoder().raw_decode(cli("trigger", "fails", "--json").output)[0]
    assert failed["status"] == "failed"
    first = cli("executions", "retry", str(failed["execution_id"]), "--json")
    assert first.exit_code == 0, first.output
    retry_id = json.loads(first.output)["execution_id"]
    second = cli("executions", "retry", str(failed["execution_id"]))
    assert second.exit_code == 1
    assert f"execution {failed['execution_id']} was already retried as execution {retry_id}" in second.output
    assert f"`conveyor executions show {retry_id}`" in second.output
    count = conn.execute(
        "select count(*) as n from conveyor.executions where retry_of = %s", (failed["execution_id"],)
    ).fetchone()
    assert count == {"n": 1}
    # the retry failed too: it may be retried itself
    assert cli("executions", "retry", str(retry_id)).exit_code == 0


def test_a_paused_execution_shows_as_paused_and_follow_tails_one_to_its_end(
    cli: Any, conn: Conn, db_url: str, tmp_path: Path
) -> None:
    import threading
    import time

    manual(cli, tmp_path, "slow", [{"id": "wait", "delay": {"for": "1s"}}, {"id": "done", "set": {"a": "1"}}])
    started = json.loads(cli("trigger", "slow", "--json").output)
    execution_id = str(started["execution_id"])
    assert started["status"] == "waiting"
    assert cli("executions", "pause", execution_id).exit_code == 0
    listed = json.loads(cli("executions", "list", "--json").output)
    assert [(r["id"], r["status"]) for r in listed] == [(started["execution_id"], "paused")]
    shown = cli("executions", "show", execution_id)
    assert "paused (was waiting)" in shown.output
    assert f"`conveyor executions resume {execution_id}`" in shown.output
    assert cli("executions", "resume", execution_id).exit_code == 0

    def tick_later() -> None:  # what a runner does: resume the delay once it is due
        time.sleep(1.5)
        with psycopg.connect(db_url, autocommit=True) as other:
            other.execute("select conveyor.tick()")

    ticker = threading.Thread(target=tick_later)
    ticker.start()
    began = time.monotonic()
    followed = cli("executions", "show", execution_id, "--follow")
    ticker.join()
    assert followed.exit_code == 0, followed.output
    assert time.monotonic() - began >= 1.0, "follow returned before the execution ended"
    lines = followed.output.splitlines()
    assert lines[-1] == f"execution {execution_id}: completed"
    assert any(line.startswith("step done ") and line.endswith(": completed") for line in lines)


def test_status_says_it_covers_the_whole_installation(cli: Any) -> None:
    shown = cli("status")
    assert shown.exit_code == 0, shown.output
    assert shown.output.startswith("installation-wide, every tenant (per tenant: `conveyor stats --tenant T`")
    assert json.loads(cli("status", "--json").output)["scope"] == "installation"
