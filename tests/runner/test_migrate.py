"""The migrator: once each, in order, refusing edits, all-or-nothing, safe when raced."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest

from conveyor.errors import ConveyorError
from conveyor.migrate import load_functions, migrate


def write_project(root: Path, migrations: dict[str, str], functions: dict[str, str]) -> tuple[Path, Path]:
    mig_dir, sql_dir = root / "migrations", root / "sql"
    mig_dir.mkdir(parents=True, exist_ok=True)
    sql_dir.mkdir(parents=True, exist_ok=True)
    for name, text in migrations.items():
        (mig_dir / name).write_text(text)
    for name, text in functions.items():
        (sql_dir / name).write_text(text)
    (sql_dir / "ORDER").write_text("".join(f"{name}\n" for name in functions))
    return mig_dir, sql_dir


BASIC_MIGRATIONS = {
    "0001_things.sql": "create table conveyor.things (id bigint primary key, label text not null);\n",
    "0002_more.sql": "alter table conveyor.things add column weight integer;\n",
}
BASIC_FUNCTIONS = {
    "things.sql": (
        "create or replace function conveyor.count_things() returns bigint\n"
        "language sql set search_path = '' as $$ select count(*) from conveyor.things $$;\n"
    ),
}


def applied(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        return [
            (r[0], r[1])
            for r in conn.execute(
                "select name, kind from conveyor.schema_migrations order by kind desc, name"
            ).fetchall()
        ]


def relation_exists(url: str, name: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute("select to_regclass(%s) is not null", (name,)).fetchone()
        return bool(row and row[0])


def test_migrations_apply_in_order_and_second_run_applies_nothing(empty_db_url: str, tmp_path: Path) -> None:
    mig_dir, sql_dir = write_project(tmp_path, BASIC_MIGRATIONS, BASIC_FUNCTIONS)
    first = migrate(empty_db_url, migrations_dir=mig_dir, sql_dir=sql_dir)
    assert first.applied == ["0001_things.sql", "0002_more.sql"]
    assert first.functions_applied == ["things.sql"]
    second = migrate(empty_db_url, migrations_dir=mig_dir, sql_dir=sql_dir)
    assert second.applied == [] and second.functions_applied == []
    assert not second.changed_anything
    assert applied(empty_db_url) == [
        ("0001_things.sql", "versioned"),
        ("0002_more.sql", "versioned"),
        ("things.sql", "repeatable"),
    ]
    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute("select conveyor.count_things()").fetchone() == (0,)


def test_changed_function_file_is_reapplied(empty_db_url: str, tmp_path: Path) -> None:
    mig_dir, sql_dir = write_project(tmp_path, BASIC_MIGRATIONS, BASIC_FUNCTIONS)
    migrate(empty_db_url, migrations_dir=mig_dir, sql_dir=sql_dir)
    (sql_dir / "things.sql").write_text(
        "create or replace function conveyor.count_things() returns bigint\n"
        "language sql set search_path = '' as $$ select 42::bigint $$;\n"
    )
    report = migrate(empty_db_url, migrations_dir=mig_dir, sql_dir=sql_dir)
    assert report.applied == [] and report.functions_applied == ["things.sql"]
    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute("select conveyor.count_things()").fetchone() == (42,)


def test_edited_applied_migration_is_refused_and_nothing_changes(empty_db_url: str, tmp_path: Path) -> None:
    mig_dir, sql_dir = write_project(tmp_path, BASIC_MIGRATIONS, BASIC_FUNCTIONS)
    migrate(empty_db_url, migrations_dir=mig_dir, sql_dir=sql_dir)
    before = applied(empty_db_url)
    (mig_dir / "0001_things.sql").write_text("create table conveyor.things (id bigint primary key);\n")
    (mig_dir / "0003_new.sql").write_text("create table conveyor.newer (id bigint);\n")
    with pytest.raises(ConveyorError, match=r"migrations/0001_things.sql was edited after it was applied"):
        migrate(empty_db_url, migrations_dir=mig_dir, sql_dir=sql_dir)
    assert applied(empty_db_url) == before
    assert not relation_exists(empty_db_url, "conveyor.newer")


def test_a_later_note_atop_an_applied_migration_is_not_an_edit(empty_db_url: str, tmp_path: Path) -> None:
    mig_dir, sql_dir = write_project(tmp_path, BASIC_MIGRATIONS, BASIC_FUNCTIONS)
    migrate(empty_db_url, migrations_dir=mig_dir, sql_dir=sql_dir)
    path = mig_dir / "0001_things.sql"
    original = path.read_text()
    note = "-- Later: 0002_more.sql adds a column to conveyor.things\n--   (weight).\n\n"
    path.write_text(note + original)
    assert not migrate(empty_db_url, migrations_dir=mig_dir, sql_dir=sql_dir).changed_anything
    edited_below = note + original.replace("label text not null", "label text")
    smuggled = "-- Later: see 0002.\ndrop table conveyor.things;\n\n" + original
    for text in (edited_below, smuggled):
        path.write_text(text)
        with pytest.raises(
            ConveyorError, match=r"migrations/0001_things.sql was edited after it was applied"
        ):
            migrate(empty_db_url, migrations_dir=mig_dir, sql_dir=sql_dir)
    assert relation_exists(empty_db_url, "conveyor.things")


def test_failing_migration_leaves_nothing_behind(empty_db_url: str, tmp_path: Path) -> None:
    migrations = {
        **BASIC_MIGRATIONS,
        "0003_broken.sql": (
            "create table conveyor.ok_part (id int);\n\nselect * from conveyor.no_such_table;\n"
        ),
    }
    mig_dir, sql_dir = write_project(tmp_path, migrations, BASIC_FUNCTIONS)
    with pytest.raises(ConveyorError) as caught:
        migrate(empty_db_url, migrations_dir=mig_dir, sql_dir=sql_dir)
    message = str(caught.value)
    assert "migrations/0003_broken.sql, line 3" in message
    assert "conveyor.no_such_table" in message and "nothing was changed" in message
    # Not even the earlier, valid migrations or the bookkeeping remain: one transaction.
    for relation in ("conveyor.things", "conveyor.ok_part", "conveyor.schema_migrations"):
        assert not relation_exists(empty_db_url, relation), relation


def test_two_concurrent_migrators_apply_once(empty_db_url: str, tmp_path: Path) -> None:
    migrations = {
        "0001_slow.sql": "create table conveyor.slow (id int);\nselect pg_sleep(1);\n",
        "0002_counter.sql": (
            "create table conveyor.applied_count (n int);\ninsert into conveyor.applied_count values (1);\n"
        ),
    }
    mig_dir, sql_dir = write_project(tmp_path, migrations, BASIC_FUNCTIONS | {"things.sql": "select 1;\n"})
    reports = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            reports.append(migrate(empty_db_url, migrations_dir=mig_dir, sql_dir=sql_dir))
        except BaseException as exc:  # surfaced in the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert sorted(len(r.applied) for r in reports) == [0, 2]
    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute("select count(*) from conveyor.applied_count").fetchone() == (1,)


def test_applied_migration_missing_from_disk_is_refused(empty_db_url: str, tmp_path: Path) -> None:
    mig_dir, sql_dir = write_project(tmp_path, BASIC_MIGRATIONS, BASIC_FUNCTIONS)
    migrate(empty_db_url, migrations_dir=mig_dir, sql_dir=sql_dir)
    (mig_dir / "0002_more.sql").unlink()
    with pytest.raises(ConveyorError, match=r"migrations/0002_more.sql was applied .* but is missing"):
        migrate(empty_db_url, migrations_dir=mig_dir, sql_dir=sql_dir)


@pytest.mark.parametrize("name", ["1_short.sql", "0001-dashes.sql", "0001_Upper.sql"])
def test_badly_named_migration_is_refused(empty_db_url: str, tmp_path: Path, name: str) -> None:
    mig_dir, sql_dir = write_project(tmp_path, {name: "select 1;\n"}, BASIC_FUNCTIONS)
    with pytest.raises(ConveyorError, match=f"migrations/{name}: a migration file is named"):
        migrate(empty_db_url, migrations_dir=mig_dir, sql_dir=sql_dir)


def test_sql_order_must_list_every_function_file(tmp_path: Path) -> None:
    _, sql_dir = write_project(tmp_path, {}, BASIC_FUNCTIONS)
    (sql_dir / "extra.sql").write_text("select 1;\n")
    with pytest.raises(ConveyorError, match=r"sql/ORDER does not list extra\.sql"):
        load_functions(sql_dir)
    (sql_dir / "ORDER").write_text("things.sql\nextra.sql\nghost.sql\n")
    with pytest.raises(ConveyorError, match=r"sql/ORDER lists ghost\.sql, which sql/ does not have"):
        load_functions(sql_dir)


def test_project_migrations_apply_cleanly_twice(empty_db_url: str) -> None:
    first = migrate(empty_db_url)
    assert first.applied and first.functions_applied and first.functions_dropped == []
    second = migrate(empty_db_url)
    assert not second.changed_anything


def functions_in_conveyor(url: str) -> dict[str, float]:
    """Every function of schema conveyor with its cost, by signature."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "select oid::regprocedure::text, procost from pg_proc"
            " where pronamespace = 'conveyor'::regnamespace order by 1"
        ).fetchall()
    return {str(r[0]): float(str(r[1])) for r in rows}


THINGS_FUNCTIONS = {
    "things.sql": (
        "create or replace function conveyor.count_things() returns bigint\n"
        "language sql set search_path = '' as $$ select count(*) from conveyor.things $$;\n"
        "create or replace function conveyor.weigh(p_id bigint) returns integer\n"
        "language sql set search_path = '' as $$ select weight from conveyor.things where id = p_id $$;\n"
        "create or replace function conveyor.label(p_id bigint) returns text\n"
        "language sql cost 5 set search_path = '' as $$ select label from conveyor.things where id = p_id $$;\n"
    ),
}


def test_functions_no_file_defines_any_more_are_dropped(empty_db_url: str, tmp_path: Path) -> None:
    mig_dir, sql_dir = write_project(tmp_path, BASIC_MIGRATIONS, THINGS_FUNCTIONS)
    assert migrate(empty_db_url, migrations_dir=mig_dir, sql_dir=sql_dir).functions_dropped == []
    # count_things is gone from sql/; weigh's argument changed type (a new overload).
    (sql_dir / "things.sql").write_text(
        THINGS_FUNCTIONS["things.sql"]
        .replace(
            "create or replace function conveyor.count_things", "create or replace function conveyor.n_things"
        )
        .replace("weigh(p_id bigint)", "weigh(p_id integer)")
    )
    report = migrate(empty_db_url, migrations_dir=mig_dir, sql_dir=sql_dir)
    assert report.functions_dropped == ["conveyor.count_things()", "conveyor.weigh(bigint)"]
    # The functions the files define keep the cost they declare (or the default).
    assert functions_in_conveyor(empty_db_url) == {
        "conveyor.label(bigint)": 5.0,
        "conveyor.n_things()": 100.0,
        "conveyor.weigh(integer)": 100.0,
    }
    assert not migrate(empty_db_url, migrations_dir=mig_dir, sql_dir=sql_dir).changed_anything


def test_functions_of_extensions_and_those_tables_depend_on_are_never_dropped(
    empty_db_url: str, tmp_path: Path
) -> None:
    migrations = {
        **BASIC_MIGRATIONS,
        "0003_dependents.sql": (
            "create extension tablefunc with schema conveyor;\n"
            "create function conveyor.default_weight() returns integer language sql as 'select 1';\n"
            "alter table conveyor.things alter column weight set default conveyor.default_weight();\n"
            "create function conveyor.touch() returns trigger language plpgsql as\n"
            "  $$ begin new.label := upper(new.label); return new; end $$;\n"
            "create trigger things_touch before insert on conveyor.things\n"
            "  for each row execute function conveyor.touch();\n"
            "create function conveyor.visible_label() returns text language sql as 'select null::text';\n"
            "alter table conveyor.things enable row level security;\n"
            "create policy things_visible on conveyor.things using (label = conveyor.visible_label());\n"
            "create function conveyor.scratch() returns integer language sql as 'select 1';\n"
        ),
    }
    mig_dir, sql_dir = write_project(tmp_path, migrations, BASIC_FUNCTIONS)
    report = migrate(empty_db_url, migrations_dir=mig_dir, sql_dir=sql_dir)
    # scratch (a migration's helper that nothing uses, which no file defines) goes, as on
    # every fresh install; the default's, the trigger's and the policy's functions stay.
    assert report.functions_dropped == ["conveyor.scratch()"]
    kept = functions_in_conveyor(empty_db_url)
    assert {"conveyor.default_weight()", "conveyor.touch()", "conveyor.visible_label()"} <= set(kept)
    with psycopg.connect(empty_db_url) as conn:
        extensions_functions = conn.execute(
            "select count(*) from pg_depend where deptype = 'e' and classid = 'pg_proc'::regclass"
            " and refobjid = (select oid from pg_extension where extname = 'tablefunc')"
        ).fetchone()
    assert extensions_functions is not None and extensions_functions[0] > 0
    assert "conveyor.normal_rand(integer,double precision,double precision)" in kept
    assert 7_777_777.0 not in kept.values(), "no function keeps the mark"
