"""The migrator: versioned DDL once each, then the engine's functions, in one transaction.

* `migrations/NNNN_name.sql` are applied once each, in order, and recorded with a
  checksum in `conveyor.schema_migrations`. Editing an applied file is refused; a note
  at its top that starts with `-- Later:` (see `_LATER_NOTE`) may be added, to point a
  reader at the migration that changes what it declares.
* `sql/*.sql` hold the engine's functions (`create or replace`). They are re-applied,
  in the order `sql/ORDER` gives, whenever any of them changed or a migration ran.
  A function of schema `conveyor` that no file defines any more (removed, renamed, or
  an overload whose arguments changed) is then dropped, so an upgraded database has
  the functions a fresh install has (see `_mark_unclaimed_functions`).
* Everything happens in one transaction under an advisory lock: two migrators started
  together are safe (the second waits, then finds nothing to do) and a failure
  changes nothing.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg.rows import tuple_row

from conveyor import settings
from conveyor.errors import ConveyorError
from conveyor.extensions import ExtensionStatus, ensure_extensions

# An arbitrary but fixed key: every Conveyor migrator in this database takes this lock.
MIGRATION_LOCK_KEY = 0x636F6E76_6579  # "convey"
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# A note added to an applied migration afterwards: comment lines at the very top, the
# first starting with "-- Later:", ended by a blank line. It is not part of the checksum
# (adding one does not make the file "edited"); a change anywhere below it still is, and
# a block with anything but comment lines before its blank line is no note.
_LATER_NOTE = re.compile(r"\A-- Later:[^\n]*\n(?:--[^\n]*\n)*\n")

_BOOKKEEPING = """
create schema if not exists conveyor;
create table if not exists conveyor.schema_migrations (
  name text primary key,
  kind text not null check (kind in ('versioned', 'repeatable')),
  checksum text not null,
  applied_at timestamptz not null default now(),
  applied_by text not null default current_user
);
"""


@dataclass(frozen=True)
class SqlFile:
    name: str
    path: Path
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(_LATER_NOTE.sub("", self.text, count=1).encode()).hexdigest()


@dataclass
class MigrationReport:
    applied: list[str] = field(default_factory=list)
    functions_applied: list[str] = field(default_factory=list)
    functions_dropped: list[str] = field(default_factory=list)
    extensions: list[ExtensionStatus] = field(default_factory=list)

    @property
    def changed_anything(self) -> bool:
        return bool(
            self.applied
            or self.functions_applied
            or self.functions_dropped
            or any(e.installed_now for e in self.extensions)
        )


def load_migrations(directory: Path) -> list[SqlFile]:
    """The versioned migrations, in order; refuses badly named or duplicate-numbered files."""
    files = []
    seen: dict[str, str] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if not match:
            raise ConveyorError(f"migrations/{path.name}: a migration file is named NNNN_lowercase_words.sql")
        number = match.group(1)
        if number in seen:
            raise ConveyorError(f"migrations/{path.name}: number {number} is also used by {seen[number]}")
        seen[number] = path.name
        files.append(SqlFile(path.name, path, path.read_text()))
    return files


def load_functions(directory: Path) -> list[SqlFile]:
    """The repeatable function files, in the order `sql/ORDER` lists them."""
    order_file = directory / "ORDER"
    if not order_file.exists():
        raise ConveyorError(f"{order_file} is missing: it lists the sql/ files in the order to apply")
    names = [line.split("#", 1)[0].strip() for line in order_file.read_text().splitlines()]
    names = [n for n in names if n]
    # a concern with many parts has a folder of its own (sql/steps/: one file per step kind)
    present = {p.relative_to(directory).as_posix() for p in directory.rglob("*.sql")}
    unlisted = sorted(present - set(names))
    if unlisted:
        raise ConveyorError(f"sql/ORDER does not list {', '.join(unlisted)}")
    missing = [n for n in names if n not in present]
    if missing:
        raise ConveyorError(f"sql/ORDER lists {', '.join(missing)}, which sql/ does not have")
    return [SqlFile(n, directory / n, (directory / n).read_text()) for n in names]


def migrate(
    url: str,
    *,
    migrations_dir: Path = settings.MIGRATIONS_DIR,
    sql_dir: Path = settings.SQL_DIR,
) -> MigrationReport:
    """Bring the database at `url` up to date. Safe to run concurrently and repeatedly."""
    migrations = load_migrations(migrations_dir)
    functions = load_functions(sql_dir)
    report = MigrationReport()
    with psycopg.connect(url, autocommit=False, row_factory=tuple_row) as conn:
        # Quiet the "already exists, skipping" notices of idempotent DDL.
        conn.execute("set local client_min_messages = warning")
        conn.execute("select pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        conn.execute(_BOOKKEEPING)
        report.extensions = ensure_extensions(conn)

        recorded: dict[str, str] = dict(
            conn.execute(
                "select name, checksum from conveyor.schema_migrations where kind = 'versioned'"
            ).fetchall()
        )
        _refuse_edited_or_missing(recorded, migrations)
        for migration in migrations:
            if migration.name in recorded:
                continue
            _execute_file(conn, migration, f"migrations/{migration.name}")
            conn.execute(
                "insert into conveyor.schema_migrations (name, kind, checksum) values (%s, 'versioned', %s)",
                (migration.name, migration.checksum),
            )
            report.applied.append(migration.name)

        recorded_functions: dict[str, str] = dict(
            conn.execute(
                "select name, checksum from conveyor.schema_migrations where kind = 'repeatable'"
            ).fetchall()
        )
        wanted = {f.name: f.checksum for f in functions}
        if report.applied or recorded_functions != wanted:
            unclaimed = _mark_unclaimed_functions(conn)
            for function_file in functions:
                _execute_file(conn, function_file, f"sql/{function_file.name}")
                report.functions_applied.append(function_file.name)
            report.functions_dropped = _drop_unclaimed_functions(conn, unclaimed)
            conn.execute("delete from conveyor.schema_migrations where kind = 'repeatable'")
            with conn.cursor() as cur:
                cur.executemany(
                    "insert into conveyor.schema_migrations (name, kind, checksum)"
                    " values (%s, 'repeatable', %s)",
                    [(f.name, f.checksum) for f in functions],
                )
        conn.commit()
    return report


def schema_version(conn: psycopg.Connection[tuple[object, ...]]) -> str | None:
    """The newest applied migration's name, or None if the database was never migrated."""
    exists = conn.execute("select to_regclass('conveyor.schema_migrations')").fetchone()
    if not exists or exists[0] is None:
        return None
    row = conn.execute("select max(name) from conveyor.schema_migrations where kind = 'versioned'").fetchone()
    return str(row[0]) if row and row[0] else None


def _refuse_edited_or_missing(recorded: dict[str, str], migrations: list[SqlFile]) -> None:
    on_disk = {m.name: m for m in migrations}
    for name, checksum in sorted(recorded.items()):
        migration = on_disk.get(name)
        if migration is None:
            raise ConveyorError(
                f"migrations/{name} was applied to this database but is missing from migrations/; "
                "restore it (applied migrations are never removed)"
            )
        if migration.checksum != checksum:
            raise ConveyorError(
                f"migrations/{name} was edited after it was applied "
                f"(recorded checksum {checksum[:12]}, file now {migration.checksum[:12]}); "
                "applied migrations are immutable: revert the edit and add a new migration instead"
            )


# A cost no file gives a function: set on every droppable function before sql/ runs.
# `create or replace function` sets a function's cost anew (to the one it names, or the
# default), and nothing else in sql/ changes it, so a function that still has this cost
# afterwards was defined by no file. (The transaction's id in pg_proc.xmin cannot tell:
# grants.sql's `revoke ... on all functions` rewrites every function's row too.)
_UNCLAIMED_COST = 7_777_777  # exact as a float4, as pg_proc.procost is

# The functions migrate may drop: plain functions of schema conveyor that no extension
# owns (pgmq, pg_cron and others keep theirs), that nothing depends on (a trigger, a
# column default, a policy, a view, a constraint: those belong to the tables' DDL and a
# drop would have to cascade), and that the migrating role owns.
_DROPPABLE_FUNCTIONS = """
select p.oid, p.oid::regprocedure::text
from pg_catalog.pg_proc as p
where
  p.pronamespace = 'conveyor'::regnamespace
  and p.prokind = 'f'
  and pg_catalog.pg_has_role(p.proowner, 'usage')
  and not exists (
    select from pg_catalog.pg_depend as d
    where d.classid = 'pg_catalog.pg_proc'::regclass and d.objid = p.oid and d.deptype = 'e'
  )
  and not exists (
    select from pg_catalog.pg_depend as d
    where d.refclassid = 'pg_catalog.pg_proc'::regclass and d.refobjid = p.oid
  )
"""


def _mark_unclaimed_functions(conn: psycopg.Connection[tuple[object, ...]]) -> list[int]:
    """Give every droppable function the marking cost (before sql/ runs); return their oids."""
    rows = conn.execute(_DROPPABLE_FUNCTIONS).fetchall()
    if rows:
        # regprocedure's text is the quoted signature; one round trip for them all
        conn.execute(";\n".join(f"alter function {r[1]} cost {_UNCLAIMED_COST}" for r in rows).encode())
    return [int(str(r[0])) for r in rows]


def _drop_unclaimed_functions(conn: psycopg.Connection[tuple[object, ...]], marked: list[int]) -> list[str]:
    """Drop the marked functions that no sql/ file defined again; return their signatures."""
    rows = conn.execute(
        "select p.oid::regprocedure::text from pg_catalog.pg_proc as p"
        " where p.oid = any(%s::oid[]) and p.procost = %s order by 1",
        (marked, _UNCLAIMED_COST),
    ).fetchall()
    dropped = [str(r[0]) for r in rows]
    for signature in dropped:
        try:
            conn.execute(f"drop function {signature}")
        except psycopg.Error as exc:
            raise ConveyorError(
                f"{signature} is defined by no file in sql/ any more, and dropping it failed: "
                f"{exc.diag.message_primary or exc}; nothing was changed"
            ) from exc
    return dropped


def _execute_file(conn: psycopg.Connection[tuple[object, ...]], sql_file: SqlFile, label: str) -> None:
    try:
        conn.execute(sql_file.text.encode())
    except psycopg.Error as exc:
        diag = exc.diag
        where = label
        if diag.statement_position:
            line = sql_file.text.encode()[: int(diag.statement_position)].count(b"\n") + 1
            where = f"{label}, line {line}"
        detail = f" ({diag.message_detail})" if diag.message_detail else ""
        hint = f" hint: {diag.message_hint}" if diag.message_hint else ""
        raise ConveyorError(
            f"{where}: {diag.message_primary or exc}{detail}{hint}; nothing was changed"
        ) from exc
