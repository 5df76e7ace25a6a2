"""`conveyor events list` and `events show` against a real database: what each event did
(the `cli` fixture of conftest.py: tenants acme, the default, and globex)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from click.testing import CliRunner

from conveyor.cli import main
from tests.sql.workflow_documents import AWAIT_REPLY

Conn = psycopg.Connection[dict[str, Any]]

GREET = {
    "slug": "greet",
    "name": "Greet",
    "trigger": {"event": "crm.contact.created"},
    "settings": {"max_executions_per_hour": 1},
    "steps": AWAIT_REPLY,
}


@pytest.fixture(autouse=True)
def greet(cli: Any, tmp_path: Path) -> None:
    """Tenant acme's greet workflow (one run an hour), which waits for a reply."""
    path = tmp_path / "greet.yaml"
    path.write_text(yaml.safe_dump(GREET))
    assert cli("workflows", "apply", "-f", str(path)).exit_code == 0


def emit(cli: Any, conn: Conn, event_type: str, entity_id: str) -> int:
    emitted = cli(
        "events", "emit", event_type, "--entity-type", "contact", "--entity-id", entity_id, "--json"
    )
    assert emitted.exit_code == 0, emitted.output
    conn.execute("select conveyor.dispatch()")
    return int(json.loads(emitted.output)["event_id"])


def show(cli: Any, event_id: int) -> dict[str, Any]:
    shown = cli("events", "show", str(event_id), "--json")
    assert shown.exit_code == 0, shown.output
    return dict(json.loads(shown.output))


def test_show_an_event_that_started_an_execution(cli: Any, conn: Conn) -> None:
    event = emit(cli, conn, "crm.contact.created", "42")
    explained = show(cli, event)
    assert [(x["workflow"], x["version"], x["status"]) for x in explained["started"]] == [
        ("greet", 1, "waiting")
    ]
    assert explained["outcome"] == "started 1"
    assert explained["event"]["entity_id"] == "42"

    human = cli("events", "show", str(event))
    assert human.exit_code == 0, human.output
    lines = human.output.splitlines()
    assert lines[0].startswith(f"event {event}: crm.contact.created  occurred ")
    assert "  dispatched " in lines[0]
    assert "entity contact 42" in lines[1]
    assert "outcome: started 1" in human.output
    execution_id = explained["started"][0]["execution_id"]
    assert "started" in human.output and f"{execution_id}" in human.output and "waiting" in human.output


def test_show_an_event_that_resumed_a_wait(cli: Any, conn: Conn) -> None:
    emit(cli, conn, "crm.contact.created", "42")
    reply = emit(cli, conn, "email.reply.received", "42")
    explained = show(cli, reply)
    assert [(r["workflow"], r["step_id"], r["status"]) for r in explained["resumed"]] == [
        ("greet", "wait", "completed")
    ]
    human = cli("events", "show", str(reply)).output
    assert "outcome: resumed 1" in human and "resumed" in human and "completed" in human


def test_show_an_event_that_matched_no_wait_and_one_refused_by_a_limit(cli: Any, conn: Conn) -> None:
    emit(cli, conn, "crm.contact.created", "42")
    stray = emit(cli, conn, "email.reply.received", "7")
    refused = emit(cli, conn, "crm.contact.created", "43")

    human = cli("events", "show", str(stray)).output
    assert "outcome: nothing: no_wait_matched" in human and "reasons" in human
    (reason,) = show(cli, stray)["reasons"]
    assert "no wait for it matched its correlation" in reason["message"]
    explained = show(cli, refused)
    assert [(r["reason"], r["workflow"]) for r in explained["reasons"]] == [("rate_limit", "greet")]
    assert "reached its limit of 1 executions per hour" in explained["reasons"][0]["message"]
    assert "outcome: nothing: rate_limit" in cli("events", "show", str(refused)).output


def test_list_summarises_each_event(cli: Any, conn: Conn) -> None:
    started = emit(cli, conn, "crm.contact.created", "42")
    stray = emit(cli, conn, "email.reply.received", "7")
    reply = emit(cli, conn, "email.reply.received", "42")
    refused = emit(cli, conn, "crm.contact.created", "43")

    listed = json.loads(cli("events", "list", "--json").output)
    assert [(e["id"], e["executions"], e["resumed"], e["reasons"], e["outcome"]) for e in listed] == [
        (refused, 0, 0, ["rate_limit"], "nothing: rate_limit"),
        (reply, 0, 1, [], "resumed 1"),
        (stray, 0, 0, ["no_wait_matched"], "nothing: no_wait_matched"),
        (started, 1, 0, [], "started 1"),
    ]
    replies = json.loads(
        cli("events", "list", "--type", "email.reply.received", "--limit", "1", "--json").output
    )
    assert [e["id"] for e in replies] == [reply]

    human = cli("events", "list").output
    assert "outcome" in human and "resumed 1" in human and "started 1" in human


def test_another_tenants_event_is_not_shown_or_listed(cli: Any, conn: Conn, db_url: str) -> None:
    event = emit(cli, conn, "crm.contact.created", "42")
    as_globex = {"CONVEYOR_DATABASE_URL": db_url, "CONVEYOR_TENANT": "globex"}
    shown = CliRunner().invoke(main, ["events", "show", str(event)], env=as_globex)
    assert shown.exit_code == 1
    assert f'error: event {event} does not exist for tenant "globex"' in shown.output
    listed = CliRunner().invoke(main, ["events", "list", "--json"], env=as_globex)
    assert listed.exit_code == 0 and json.loads(listed.output) == []


def test_a_bad_limit_is_one_line_of_error(cli: Any) -> None:
    result = cli("events", "list", "--limit", "0")
    assert result.exit_code == 1
    assert result.output == "error: limit 0 is out of range: list 1 to 1000 events\n"
