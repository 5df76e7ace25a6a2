"""Reading what capture produced: ingest the capture logs (as dispatch does first), then the
events. The capture test modules share these; their fixtures (`tenants`, `contacts`) are
tests/sql/conftest.py's."""

from __future__ import annotations

import psycopg

Conn = psycopg.Connection[dict[str, object]]

EVENTS = """
select event_type, tenant_id, source, entity_type, entity_id, payload, changed_columns, depth
from conveyor.events order by event_id
"""


def ingest(conn: Conn) -> int:
    """Turn the captured rows into events, as dispatch does before it claims events."""
    row = conn.execute("select conveyor.ingest_captures(1000000) as n").fetchone()
    assert row is not None
    return int(str(row["n"]))


def forget_events(conn: Conn) -> None:
    """Start a test's interesting part with no events (those captured so far ingested and gone)."""
    ingest(conn)
    conn.execute("delete from conveyor.events")


def events(conn: Conn) -> list[dict[str, object]]:
    ingest(conn)
    return conn.execute(EVENTS).fetchall()
