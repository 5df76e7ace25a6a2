"""`conveyor campaigns`: apply the example campaign, list, show, enroll (twice: refused),
pause / resume one enrollment and the campaign, stats; a bad document is one error naming
the campaign and the path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import yaml

Conn = psycopg.Connection[dict[str, Any]]
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "campaigns" / "welcome.yaml"


def contacts(conn: Conn) -> None:
    conn.execute(
        "create table public.contacts (id bigint primary key, tenant_id text, first_name text, email text,"
        " timezone text, owner_id text, status text)"
    )
    conn.execute(
        "insert into conveyor.entities (entity, table_name, id_column, tenant_column)"
        " values ('contact', 'public.contacts', 'id', 'tenant_id')"
    )
    conn.execute(
        "insert into public.contacts values (1, 'acme', 'Ada', 'ada@example.com', 'Europe/Berlin', 'u1', 'lead'),"
        " (2, 'acme', 'Bob', 'bob@example.com', null, 'u1', 'customer')"
    )
    conn.commit()


def test_the_example_campaign_through_the_cli(cli: Any, conn: Conn) -> None:
    contacts(conn)
    applied = cli("campaigns", "apply", str(EXAMPLE))
    assert applied.exit_code == 0, applied.output
    assert "applied  welcome version 1" in applied.output
    enrolled = cli("campaigns", "enroll", "welcome", "1", "2", "3", "--json")
    assert [r["result"] for r in json.loads(enrolled.output)] == ["enrolled", "enrolled", "not found"]
    again = cli(
        "campaigns",
        "enroll",
        "welcome",
        "--where",
        '{"field": "row.status", "op": "equals", "value": "lead"}',
    )
    assert "already enrolled" in again.output
    listed = json.loads(cli("campaigns", "list", "--json").output)
    assert [(c["slug"], c["active"], c["enrolled"]) for c in listed] == [("welcome", 2, 2)]
    [first] = [r for r in json.loads(enrolled.output) if r["entity_id"] == "1"]
    paused = cli("campaigns", "pause", "welcome", "--enrollment", str(first["enrollment_id"]))
    assert paused.exit_code == 0 and "paused" in paused.output, paused.output
    assert "1 enrollment(s)" in cli("campaigns", "pause", "welcome").output  # the other one
    assert "2 enrollment(s)" in cli("campaigns", "resume", "welcome").output
    shown = cli("campaigns", "show", "welcome")
    assert "version 1" in shown.output and "active 2" in shown.output, shown.output
    stats = json.loads(cli("campaigns", "stats", "welcome", "--json").output)
    assert stats[0]["enrolled"] == 2


def test_a_bad_campaign_is_one_error_with_its_path(cli: Any, conn: Conn, tmp_path: Path) -> None:
    contacts(conn)
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["steps"][1]["delay"] = "soon"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = cli("campaigns", "apply", str(path))
    assert result.exit_code == 1
    assert 'campaign welcome: 1 problem(s): steps[1].delay: invalid duration "soon"' in result.output
