"""A table's cumulative activity counters (pg_stat_user_tables), for tests that check how
the engine reads or writes a table rather than what it leaves in it."""

from __future__ import annotations

from typing import Any

import psycopg


def table_counters(conn: psycopg.Connection[dict[str, Any]], table: str) -> dict[str, int]:
    """Rows read (`read`: scans and index fetches), inserted, updated and updated heap-only
    (`hot`) in `table` so far, including what this session did until now."""
    conn.execute("select pg_stat_force_next_flush()")  # flushed as this statement ends
    conn.execute("select pg_stat_clear_snapshot()")
    row = conn.execute(
        "select coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) as read, n_tup_ins as inserted,"
        " n_tup_upd as updated, n_tup_hot_upd as hot from pg_stat_user_tables where relid = %s::regclass",
        (table,),
    ).fetchone()
    assert row is not None
    return {key: int(value) for key, value in row.items()}
