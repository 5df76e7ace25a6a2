"""`conveyor status` names its scope (every tenant, or one with --tenant), and every command
prints times one way (UTC, to the second, with a Z) and lengths of time for people (4.2s,
3m 05s); real PostgreSQL, the `cli` fixture of conftest.py (tenants acme and globex)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import psycopg
import yaml

from conveyor.durations import human

Conn = psycopg.Connection[dict[str, Any]]

NOTE = {
    "slug": "note-it",
    "name": "Notes it",
    "trigger": {"event": "test.run.go"},
    "steps": [{"id": "note", "set": {"seen": "yes"}}],
}
STAMP = r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}Z"


def apply(cli: Any, tmp_path: Path, document: dict[str, Any]) -> None:
    path = tmp_path / f"{document['slug']}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    result = cli("workflows", "apply", "-f", str(path))
    assert result.exit_code == 0, result.output


def test_status_says_whether_it_is_global_or_one_tenants(cli: Any, conn: Conn, tmp_path: Path) -> None:
    apply(cli, tmp_path, NOTE)
    assert cli("trigger", "note-it").exit_code == 0
    conn.execute("select conveyor.emit('globex', 'test.run.go')")
    everyone = cli("status")
    assert everyone.exit_code == 0, everyone.output
    assert everyone.output.startswith(
        "installation-wide, every tenant (per tenant: `conveyor status --tenant T`"
    )
    assert "events waiting for dispatch: 1" in everyone.output
    acme = cli("status", "--tenant", "acme")
    assert acme.exit_code == 0, acme.output
    assert acme.output.startswith("tenant acme\naction queue (shared by every tenant): ")
    assert "events waiting for dispatch: 0" in acme.output
    assert "executions in the last hour: completed 1; waiting now: 0, paused 0" in acme.output
    globex = json.loads(cli("status", "--tenant", "globex", "--json").output)
    assert (globex["scope"], globex["pending_events"], globex["executions_last_hour"]) == ("globex", 1, {})
    assert json.loads(cli("status", "--json").output)["scope"] == "installation"
    nobody = cli("status", "--tenant", "nobody")
    assert nobody.exit_code == 1 and 'tenant "nobody" does not exist' in nobody.output


def test_times_have_one_format_and_durations_are_for_people(cli: Any, tmp_path: Path) -> None:
    apply(cli, tmp_path, NOTE)
    listed = cli("workflows", "list")
    assert re.search(STAMP, listed.output), listed.output
    started = json.loads(cli("trigger", "note-it", "--json").output)["execution_id"]
    shown = cli("executions", "show", str(started))
    assert re.search(f"created {STAMP}", shown.output), shown.output
    assert re.search(STAMP, cli("executions", "list").output)
    # the ms column reads as a length of time, not a bare number
    assert re.search(r"│ \d+ms ", shown.output) or re.search(r"│ \d+\.\ds ", shown.output), shown.output
    assert re.search(f"versions: 1 \\({STAMP}\\)", cli("workflows", "show", "note-it").output)
    event = json.loads(cli("events", "emit", "test.run.go", "--json").output)["event_id"]
    assert re.search(f"occurred {STAMP}  not dispatched yet", cli("events", "show", str(event)).output)


def test_human_durations() -> None:
    assert [human(v) for v in (850, 4200, 185_000, 7_800_000, 273_600_000, None)] == [
        "850ms",
        "4.2s",
        "3m 05s",
        "2h 10m",
        "3d 4h",
        "-",
    ]
