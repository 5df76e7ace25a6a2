"""`conveyor workflows refusals SLUG`: why a workflow's events started nothing, by reason
(the `cli` fixture of conftest.py: tenants acme, the default, and globex)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import yaml

Conn = psycopg.Connection[dict[str, Any]]


def apply(cli: Any, tmp_path: Path, slug: str, settings: dict[str, Any]) -> None:
    path = tmp_path / f"{slug}.yaml"
    document = {
        "slug": slug,
        "name": slug,
        "trigger": {"event": "crm.deal.updated"},
        "settings": settings,
        "steps": [{"id": "note", "set": {"seen": "yes"}}],
    }
    path.write_text(yaml.safe_dump(document))
    result = cli("workflows", "apply", "-f", str(path))
    assert result.exit_code == 0, result.output


def emit(conn: Conn, deal: str, n: int) -> None:
    for _ in range(n):
        conn.execute(
            "select conveyor.emit('acme', 'crm.deal.updated', '{}', p_entity_type => 'deal', p_entity_id => %s)",
            (deal,),
        )
    conn.execute("select conveyor.dispatch()")


def test_refusals_count_each_reason_for_the_workflow_only(cli: Any, conn: Conn, tmp_path: Path) -> None:
    apply(cli, tmp_path, "alerts", {"throttle": {"key": "{{trigger.entity_id}}", "limit": 1, "period": "1h"}})
    apply(cli, tmp_path, "once", {"run_once_per_entity": True})
    emit(conn, "d1", 3)
    # the chain depth limit refuses an event before any workflow is matched
    conn.execute("set conveyor.max_event_depth = 0")
    conn.execute(
        "insert into conveyor.events (tenant_id, event_type, source, payload, depth) values"
        " ('acme', 'crm.deal.updated', 'api', '{}', 1)"
    )
    conn.execute("select conveyor.dispatch()")
    conn.execute("reset conveyor.max_event_depth")

    shown = cli("workflows", "refusals", "alerts", "--json")
    assert shown.exit_code == 0, shown.output
    counts = {r["reason"]: r["events"] for r in json.loads(shown.output)}
    assert counts == {"throttle": 2, "depth_limit": 1}
    once = {
        r["reason"]: r["events"] for r in json.loads(cli("workflows", "refusals", "once", "--json").output)
    }
    assert once == {"run_once": 2, "depth_limit": 1}

    table = cli("workflows", "refusals", "alerts")
    assert table.exit_code == 0, table.output
    assert "│ throttle" in table.output and "│ depth_limit" in table.output

    missing = cli("workflows", "refusals", "nope")
    assert missing.exit_code != 0
    assert "workflow 'nope' does not exist for tenant 'acme'" in missing.output


def test_no_refusals_says_so(cli: Any, tmp_path: Path) -> None:
    apply(cli, tmp_path, "quiet", {})
    shown = cli("workflows", "refusals", "quiet", "--since", "1h")
    assert shown.exit_code == 0, shown.output
    assert shown.output.strip() == "no event was refused for workflow quiet in the last 1h"
