"""Fault injection on the engine's own tables: real PostgreSQL errors, raised by a trigger
where a tenant's data meets the engine (see tests/sql/test_containment.py)."""

from __future__ import annotations

from typing import Any

import psycopg

Conn = psycopg.Connection[dict[str, Any]]


def poison_on(conn: Conn, table: str, *, sqlstate: str = "22003", when: str = "insert") -> None:
    """Make writing a row of `table` whose trigger payload says poison fail with sqlstate."""
    column = "trigger" if table == "executions" else "input"
    conn.execute(
        f"""
        create function conveyor.test_poison() returns trigger language plpgsql as $$
        begin
          if new.{column}::text like '%%poison%%' then
            raise exception using errcode = '{sqlstate}', message = 'poisoned row';
          end if;
          return new;
        end $$;
        create trigger test_poison before {when} on conveyor.{table}
        for each row execute function conveyor.test_poison();
        """
    )
