"""`conveyor dry-run` judges the trigger as dispatch would (would not start: <reason>), and
`conveyor events show` says for each workflow an event reached what happened: started execution
N, refused (rate limit, run once), or not started (filter or condition false). Each sample is
dry-run before the same event is dispatched, and the two must agree: sql/trigger_verdict.sql
repeats dispatch's checks, and this holds it to them (real PostgreSQL, the `cli` fixture)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg.types.json import Jsonb

Conn = psycopg.Connection[dict[str, Any]]

DEALS = {
    "slug": "deal-flow",
    "name": "Pro deals, once each, two an hour",
    "trigger": {"event": "crm.deal.won", "filter": {"payload.plan": "pro"}},
    "settings": {"run_once_per_entity": True, "max_executions_per_hour": 2},
    "steps": [{"id": "note", "set": {"plan": "{{trigger.payload.plan}}"}}],
}
BIG_ONLY = {
    "slug": "big-only",
    "name": "Big deals",
    "trigger": {
        "event": "crm.deal.*",
        "condition": {"field": "trigger.payload.amount", "op": "gte", "value": 1000},
    },
    "steps": [{"id": "note", "set": {"big": "yes"}}],
}


def write(tmp_path: Path, document: dict[str, Any]) -> Path:
    path = tmp_path / f"{document['slug']}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def sample(
    tmp_path: Path, entity: str, plan: str, amount: int = 10, kind: str = "crm.deal.won"
) -> dict[str, Any]:
    return {
        "event_type": kind,
        "entity_type": "deal",
        "entity_id": entity,
        "payload": {"plan": plan, "amount": amount},
    }


def dry_run(cli: Any, tmp_path: Path, event: dict[str, Any]) -> Any:
    path = tmp_path / "event.json"
    path.write_text(json.dumps(event))
    return cli("dry-run", "-f", str(write(tmp_path, DEALS)), "--event", str(path))


def emit_and_dispatch(conn: Conn, event: dict[str, Any]) -> int:
    row = conn.execute(
        "select conveyor.emit('acme', %s, %s, %s, %s) as id",
        (event["event_type"], Jsonb(event["payload"]), event["entity_type"], event["entity_id"]),
    ).fetchone()
    conn.execute("select conveyor.dispatch()")
    assert row is not None
    return int(row["id"])


def reached(cli: Any, event_id: int) -> dict[str, str]:
    shown = cli("events", "show", str(event_id))
    assert shown.exit_code == 0, shown.output
    explained = json.loads(cli("events", "show", str(event_id), "--json").output)
    lines = {w["workflow"]: w["message"] for w in explained["workflows"]}
    for workflow, message in lines.items():
        assert f"  {workflow}: {message}" in shown.output
    return lines


def test_dry_run_and_dispatch_agree_and_events_show_says_why(cli: Any, conn: Conn, tmp_path: Path) -> None:
    for document in (DEALS, BIG_ONLY):
        assert cli("workflows", "apply", "-f", str(write(tmp_path, document))).exit_code == 0

    cases = [
        # (sample, what dry-run says, what events show says for deal-flow)
        (sample(tmp_path, "d1", "pro"), None, r"started execution \d+ \(completed\)"),
        (
            sample(tmp_path, "d2", "free"),
            "the trigger's filter is false for it",
            "not started: the trigger's filter",
        ),
        (
            sample(tmp_path, "d1", "pro"),
            "runs once per entity and already ran for deal:d1",
            "refused: .*runs once per entity",
        ),
        (sample(tmp_path, "d3", "pro"), None, r"started execution \d+"),
        (
            sample(tmp_path, "d4", "pro"),
            r"rate limit of 2 per hour reached \(2 started in the last hour\) \(rate_limit\)",
            "refused: .*reached its limit of 2 executions per hour",
        ),
    ]
    for event, would_not, shown in cases:
        tried = dry_run(cli, tmp_path, event)
        assert tried.exit_code == 0, tried.output
        if would_not is None:
            assert "would not start" not in tried.output and "final status: completed" in tried.output
        else:
            assert re.search(f"dry run of deal-flow: would not start: .*{would_not}", tried.output), (
                tried.output
            )
        event_id = emit_and_dispatch(conn, event)
        started = conn.execute(
            "select count(*) as n from conveyor.executions as x join conveyor.workflows as w using (workflow_id)"
            " where x.event_id = %s and w.slug = 'deal-flow'",
            (event_id,),
        ).fetchone()
        assert started == {"n": 0 if would_not else 1}  # dispatch did what dry-run said
        lines = reached(cli, event_id)
        assert re.match(shown, lines["deal-flow"]), lines
        assert lines["big-only"].startswith("not started: the trigger condition is false for it")

    big = emit_and_dispatch(conn, sample(tmp_path, "d9", "free", amount=5000, kind="crm.deal.lost"))
    assert re.match(r"started execution \d+", reached(cli, big)["big-only"])
    assert "deal-flow" not in reached(cli, big)  # its type does not reach deal-flow

    mismatch = dry_run(cli, tmp_path, sample(tmp_path, "d5", "pro", kind="crm.deal.lost"))
    assert (
        "would not start: event type crm.deal.lost does not match the trigger crm.deal.won" in mismatch.output
    )
    as_json = json.loads(
        cli(
            "dry-run", "-f", str(write(tmp_path, DEALS)), "--event", str(tmp_path / "event.json"), "--json"
        ).output
    )
    assert (as_json["status"], as_json["reason"], as_json["steps"]) == ("would_not_start", "event_type", [])
    # nothing kept: the dry runs published no version and started nothing
    assert conn.execute(
        "select count(*) as n from conveyor.workflow_versions as v join conveyor.workflows as w using (workflow_id)"
        " where w.slug = 'deal-flow'"
    ).fetchone() == {"n": 1}


def test_a_pending_event_says_not_dispatched_yet(cli: Any, conn: Conn, tmp_path: Path) -> None:
    assert cli("workflows", "apply", "-f", str(write(tmp_path, DEALS))).exit_code == 0
    row = conn.execute("select conveyor.emit('acme', 'crm.deal.won', '{\"plan\": \"pro\"}') as id").fetchone()
    assert row is not None
    assert reached(cli, int(row["id"])) == {"deal-flow": "not dispatched yet"}


def test_dry_run_says_when_the_months_quota_is_spent(cli: Any, conn: Conn, tmp_path: Path) -> None:
    assert cli("tenants", "set-plan", "acme", "free").exit_code == 0
    event = sample(tmp_path, "d1", "pro")
    assert "would not start" not in dry_run(cli, tmp_path, event).output
    conn.execute(
        "insert into conveyor.tenant_usage (tenant_id, period_start, shard, executions)"
        " values ('acme', conveyor.usage_period_start('UTC', now()), 0, 100)"
    )
    spent = dry_run(cli, tmp_path, event)
    assert spent.exit_code == 0, spent.output
    assert 'would not start: quota executions_per_month of plan "free" exceeded' in spent.output
    assert spent.output.rstrip().endswith("(executions_per_month)")
