"""pg_cron and pgmq: installed by the migrator, and recorded with version and method.

* pg_cron comes from the server's packages. Its scheduler runs in one database per
  cluster (`cron.database_name`), and the extension can only be created there. When
  Conveyor's database is not that one, the migrator says so and carries on: the
  runner drives the periodic work, and an operator can schedule it from the cron
  database with `cron.schedule_in_database`.
* pgmq is `create extension pgmq` where the server has it; otherwise the SQL-only
  install that the `pgmq` Python package ships (Debian 12 has no pgmq package).
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from pgmq.install import get_embedded_install_sql, get_embedded_sql_version

_COMPONENTS_TABLE = """
create table if not exists conveyor.installed_components (
  name text primary key,
  version text not null,
  method text not null,
  installed_at timestamptz not null default now()
);
"""


@dataclass(frozen=True)
class ExtensionStatus:
    name: str
    version: str | None
    method: str
    installed_now: bool = False
    warning: str | None = None

    def describe(self) -> str:
        text = f"{self.name} {self.version or '-'} ({self.method})"
        return f"{text}: {self.warning}" if self.warning else text


def ensure_extensions(conn: psycopg.Connection[tuple[object, ...]]) -> list[ExtensionStatus]:
    """Install pg_cron (where possible) and pgmq inside the caller's transaction."""
    conn.execute(_COMPONENTS_TABLE)
    return [_ensure_pg_cron(conn), _ensure_pgmq(conn)]


def _installed_version(conn: psycopg.Connection[tuple[object, ...]], name: str) -> str | None:
    row = conn.execute("select extversion from pg_extension where extname = %s", (name,)).fetchone()
    return str(row[0]) if row else None


def _available(conn: psycopg.Connection[tuple[object, ...]], name: str) -> bool:
    row = conn.execute("select 1 from pg_available_extensions where name = %s", (name,)).fetchone()
    return row is not None


def _record(conn: psycopg.Connection[tuple[object, ...]], status: ExtensionStatus) -> ExtensionStatus:
    conn.execute(
        """
        insert into conveyor.installed_components (name, version, method) values (%s, %s, %s)
        on conflict (name) do update
          set version = excluded.version, method = excluded.method, installed_at = now()
          where (installed_components.version, installed_components.method)
            is distinct from (excluded.version, excluded.method)
        """,
        (status.name, status.version, status.method),
    )
    return status


def _ensure_pg_cron(conn: psycopg.Connection[tuple[object, ...]]) -> ExtensionStatus:
    version = _installed_version(conn, "pg_cron")
    if version:
        return _record(conn, ExtensionStatus("pg_cron", version, "extension"))
    row = conn.execute(
        "select current_database(), current_setting('cron.database_name', true), "
        "current_setting('shared_preload_libraries')"
    ).fetchone()
    assert row is not None
    database, cron_database, preload = (str(v) if v is not None else None for v in row)
    if not _available(conn, "pg_cron"):
        return ExtensionStatus(
            "pg_cron",
            None,
            "absent",
            warning=("the server has no pg_cron; install the Debian package postgresql-NN-cron"),
        )
    if "pg_cron" not in (preload or ""):
        return ExtensionStatus(
            "pg_cron",
            None,
            "absent",
            warning=("pg_cron is not in shared_preload_libraries; add it and restart the server"),
        )
    if cron_database != database:
        return ExtensionStatus(
            "pg_cron",
            None,
            "absent",
            warning=(
                f"pg_cron's scheduler runs in database {cron_database!r}, not {database!r}; "
                "periodic work is driven by the runner only"
            ),
        )
    conn.execute("create extension if not exists pg_cron")
    version = _installed_version(conn, "pg_cron")
    return _record(conn, ExtensionStatus("pg_cron", version, "extension", installed_now=True))


def _ensure_pgmq(conn: psycopg.Connection[tuple[object, ...]]) -> ExtensionStatus:
    version = _installed_version(conn, "pgmq")
    if version:
        return _record(conn, ExtensionStatus("pgmq", version, "extension"))
    if _available(conn, "pgmq"):
        conn.execute("create extension if not exists pgmq")
        return _record(
            conn, ExtensionStatus("pgmq", _installed_version(conn, "pgmq"), "extension", installed_now=True)
        )
    already = conn.execute("select to_regclass('pgmq.meta') is not null").fetchone()
    bundled = get_embedded_sql_version()
    if already and already[0]:
        row = conn.execute("select version from conveyor.installed_components where name = 'pgmq'").fetchone()
        installed = str(row[0]) if row else "unknown"
        warning = None
        if installed != bundled:
            warning = (
                f"the pgmq Python package bundles {bundled}; the SQL-only install cannot be upgraded in place"
            )
        return ExtensionStatus("pgmq", installed, "sql-only", warning=warning)
    # The SQL-only script is written for a fresh schema; it runs inside our transaction.
    conn.execute(get_embedded_install_sql().encode())
    return _record(conn, ExtensionStatus("pgmq", bundled, "sql-only", installed_now=True))
