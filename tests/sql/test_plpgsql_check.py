"""Every plpgsql function in the conveyor schema passes plpgsql_check.

The check is a test (not a separate script) so `make test` fails when a function breaks.
A second test proves the check finds a real error, so the first cannot pass vacuously.
"""

from __future__ import annotations

import psycopg

CHECK_ALL = """
select p.oid::regprocedure::text as function, c.lineno, c.message, c.level
from pg_proc as p
join pg_language as l on l.oid = p.prolang and l.lanname = 'plpgsql'
join pg_namespace as n on n.oid = p.pronamespace and n.nspname = %s
cross join lateral plpgsql_check_function_tb(
  p.oid::regprocedure, fatal_errors => false, extra_warnings => false, performance_warnings => false
) as c
where p.prorettype <> 'trigger'::regtype and c.level = 'error'
order by 1, 2
"""


def plpgsql_errors(conn: psycopg.Connection[dict[str, object]], schema: str) -> list[dict[str, object]]:
    conn.execute("create extension if not exists plpgsql_check")
    return conn.execute(CHECK_ALL, (schema,)).fetchall()


def test_every_conveyor_function_passes_plpgsql_check(conn: psycopg.Connection[dict[str, object]]) -> None:
    assert plpgsql_errors(conn, "conveyor") == []


def test_plpgsql_check_catches_a_broken_function(conn: psycopg.Connection[dict[str, object]]) -> None:
    conn.execute("create schema lint_probe")
    conn.execute("""
        create function lint_probe.broken() returns int language plpgsql as $$
        begin
          return (select count(*) from lint_probe.no_such_table);
        end $$""")
    errors = plpgsql_errors(conn, "lint_probe")
    assert [e["function"] for e in errors] == ["lint_probe.broken()"]
    assert "no_such_table" in str(errors[0]["message"])
