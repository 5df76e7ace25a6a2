"""Tenancy: tenants, the verified tenant context, require_tenant, and row-level security isolation."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from tests.sql.tenant_context import acting_for, mint_token
from tests.sql.tenant_seeds import SEEDS, TENANT_TABLES, count, seeded_tables, tenant_tables

Conn = psycopg.Connection[dict[str, object]]

# --- the catalog: every tenant table is protected, and covered by this file -------------------


def test_every_tenant_table_has_forced_row_level_security_on_the_verified_tenant(conn: Conn) -> None:
    rows = conn.execute(TENANT_TABLES).fetchall()
    assert len(rows) >= 10
    unprotected = [
        r for r in rows if not (r["rls"] and r["forced"] and r["has_tenant_id"] and r["has_policy"])
    ]
    assert unprotected == []


def test_isolation_seeds_cover_the_core_tables(conn: Conn) -> None:
    migrations = Path(__file__).resolve().parents[2] / "migrations"
    core = {
        name
        for path in sorted(migrations.glob("000[2-5]_*.sql"))
        for name in re.findall(r"create table conveyor\.(\w+)", path.read_text())
    }
    core_tenant_tables = core & set(tenant_tables(conn))
    assert {"tenants", "events", "workflows", "executions"} <= core_tenant_tables
    assert core_tenant_tables <= set(SEEDS)
    assert set(SEEDS) <= set(tenant_tables(conn))


def test_every_tenant_table_is_seeded_for_the_isolation_tests(conn: Conn) -> None:
    unseeded = sorted(set(tenant_tables(conn)) - set(SEEDS))
    assert unseeded == [], (
        "add a seed statement to SEEDS in tests/sql/tenant_seeds.py for each of these tables"
    )


def test_the_application_role_has_no_write_privilege_on_tenant_tables(conn: Conn) -> None:
    writable = conn.execute(
        """
        select t, p from unnest(%s::text[]) as t, unnest(array['insert', 'update', 'delete', 'truncate']) as p
        where has_table_privilege('conveyor_app', 'conveyor.' || quote_ident(t), p)
        """,
        (tenant_tables(conn),),
    ).fetchall()
    assert writable == []


# --- isolation ----------------------------------------------------------------------------


def test_a_tenant_session_reads_only_its_own_rows_in_every_table(
    app: Conn, two_tenants: Conn, acme: str
) -> None:
    with acting_for(app, acme):
        for table in seeded_tables(two_tenants):
            seen = count(app, table)
            assert seen == count(two_tenants, table, "tenant_id = 'acme'"), table
            assert seen >= 1, table
            assert count(app, table, "tenant_id = 'globex'") == 0, table
            assert count(two_tenants, table, "tenant_id = 'globex'") >= 1, table


def test_a_session_without_a_tenant_sees_nothing(app: Conn, two_tenants: Conn) -> None:
    for table in seeded_tables(two_tenants):
        assert count(app, table) == 0, table


def test_the_plain_setting_alone_names_no_tenant_for_the_application_role(
    app: Conn, two_tenants: Conn
) -> None:
    # What a hostile client tried: name tenant acme itself, per session or per transaction.
    app.execute("set conveyor.tenant_id = 'acme'")
    with app.transaction():
        app.execute("select set_config('conveyor.tenant_id', 'acme', true)")
        for table in seeded_tables(two_tenants):
            assert count(app, table) == 0, table
        assert app.execute("select conveyor.current_tenant() as t").fetchone() == {"t": None}
    for call in (
        "select conveyor.create_api_key('acme', 'stolen')",
        "select conveyor.emit('acme', 'crm.contact.created')",
        "select conveyor.rotate_webhook_secret('acme', 'follow-up')",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as error:
            app.execute(call)
        assert "no tenant is set for this session" in str(error.value)
        assert "conveyor.tenant_id is not trusted" in str(error.value.diag.message_detail)
    assert count(two_tenants, "api_keys") == 2
    assert count(two_tenants, "events") == 2


def test_a_verified_tenant_ends_with_its_transaction(app: Conn, two_tenants: Conn, acme: str) -> None:
    # A pooled connection (PgBouncer in transaction mode): the next transaction on it may
    # be another client's, and must not inherit the tenant.
    with acting_for(app, acme):
        assert count(app, "events") == 1
    assert count(app, "events") == 0
    with app.transaction():
        assert count(app, "events") == 0
        assert app.execute("select conveyor.current_tenant() as t").fetchone() == {"t": None}
    # A rolled-back transaction takes its context with it too.
    with pytest.raises(psycopg.errors.DivisionByZero), acting_for(app, acme):
        app.execute("select 1 / 0")
    assert count(app, "events") == 0


def test_set_tenant_null_clears_the_context(app: Conn, acme: str) -> None:
    with acting_for(app, acme):
        assert count(app, "events") == 1
        assert app.execute("select conveyor.set_tenant(null) as t").fetchone() == {"t": None}
        assert count(app, "events") == 0
        app.execute("select conveyor.set_tenant(%s)", (acme,))
        assert app.execute("select conveyor.set_tenant('') as t").fetchone() == {"t": None}
        assert count(app, "events") == 0


def test_the_policies_ask_for_the_tenant_once_per_statement(app: Conn, two_tenants: Conn, acme: str) -> None:
    two_tenants.execute("select conveyor.emit('acme', 'crm.contact.created') from generate_series(1, 200)")
    app.execute("reset role")
    app.execute("set track_functions = 'all'")  # a superuser setting: before set role
    app.execute("set role conveyor_app")
    # A sequential scan: a per-row policy would call the function for each of the rows.
    app.execute("set enable_indexscan = off; set enable_bitmapscan = off; set enable_indexonlyscan = off")
    calls = (
        "select coalesce(sum(calls), 0) as n from pg_stat_xact_user_functions"
        " where funcid = 'conveyor.current_tenant()'::regprocedure"
    )
    with acting_for(app, acme):
        before = app.execute(calls).fetchone()
        assert count(app, "events") == 201
        after = app.execute(calls).fetchone()
    assert before is not None and after is not None
    assert int(str(after["n"])) - int(str(before["n"])) == 1


def test_the_application_roles_queries_may_still_run_in_parallel(
    app: Conn, two_tenants: Conn, acme: str
) -> None:
    # current_tenant is parallel restricted (a worker has a pid of its own, so the leader
    # checks the context), not unsafe: a large scan of the tenant's rows may use workers.
    two_tenants.execute("select conveyor.emit('acme', 'crm.contact.created') from generate_series(1, 2000)")
    two_tenants.execute("analyze conveyor.events")
    app.execute(
        "set parallel_setup_cost = 0; set parallel_tuple_cost = 0; set min_parallel_table_scan_size = 0;"
        " set enable_indexscan = off; set enable_bitmapscan = off; set enable_indexonlyscan = off"
    )
    with acting_for(app, acme):
        plan = "\n".join(
            str(r["QUERY PLAN"]) for r in app.execute("explain select count(*) from conveyor.events")
        )
        assert "Parallel Seq Scan on events" in plan
        assert count(app, "events") == 2001


def test_writes_to_another_tenants_rows_are_refused_or_change_nothing(
    app: Conn, two_tenants: Conn, acme: str
) -> None:
    before = {
        t: two_tenants.execute(
            sql.SQL("select to_jsonb(x) as r from conveyor.{} as x where tenant_id = 'globex'").format(
                sql.Identifier(t)
            )
        ).fetchall()
        for t in seeded_tables(two_tenants)
    }
    for table in seeded_tables(two_tenants):
        ident = sql.Identifier(table)
        attempts = [
            sql.SQL("update conveyor.{} set tenant_id = tenant_id where tenant_id = 'globex'").format(ident),
            sql.SQL("delete from conveyor.{} where tenant_id = 'globex'").format(ident),
            sql.SQL("update conveyor.{} set tenant_id = 'globex' where tenant_id = 'acme'").format(ident),
            sql.SQL("truncate conveyor.{} cascade").format(ident),
        ]
        for statement in attempts:
            try:
                with acting_for(app, acme):
                    cursor = app.execute(statement)
                    assert cursor.rowcount in (0, -1), (table, statement.as_string(app))
            except psycopg.errors.InsufficientPrivilege:
                pass
        # An insert of a copy of globex's row, as acme.
        row = two_tenants.execute(
            sql.SQL(
                "select to_jsonb(x) as r from conveyor.{} as x where tenant_id = 'globex' limit 1"
            ).format(ident)
        ).fetchone()
        assert row is not None
        with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_for(app, acme):
            app.execute(
                sql.SQL(
                    "insert into conveyor.{} overriding system value select * from jsonb_populate_record(null::conveyor.{}, %s)"
                ).format(ident, ident),
                (Jsonb(row["r"]),),
            )
    after = {
        t: two_tenants.execute(
            sql.SQL("select to_jsonb(x) as r from conveyor.{} as x where tenant_id = 'globex'").format(
                sql.Identifier(t)
            )
        ).fetchall()
        for t in seeded_tables(two_tenants)
    }
    assert after == before


def test_the_action_queue_is_closed_to_the_application_role(app: Conn, acme: str) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_for(app, acme):
        app.execute("select * from pgmq.q_conveyor_actions")


def test_emit_for_another_tenant_is_refused(app: Conn, two_tenants: Conn, acme: str) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as error, acting_for(app, acme):
        app.execute("select conveyor.emit('globex', 'crm.contact.created')")
    assert "tenant 'globex' is not this session's tenant" in str(error.value)
    with acting_for(app, acme):
        own = app.execute("select conveyor.emit('acme', 'crm.contact.created') as id").fetchone()
    assert own is not None and own["id"] is not None
    assert count(two_tenants, "events", "tenant_id = 'globex'") == 1
    assert count(two_tenants, "events", "tenant_id = 'acme'") == 2


def test_an_api_key_for_another_tenant_is_refused(app: Conn, two_tenants: Conn, acme: str) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as error, acting_for(app, acme):
        app.execute("select conveyor.create_api_key('globex', 'stolen')")
    assert "tenant 'globex' is not this session's tenant" in str(error.value)
    with acting_for(app, acme):
        key = app.execute("select conveyor.create_api_key('acme', 'ci') as k").fetchone()
    assert key is not None and str(key["k"]).startswith("cvk_")
    assert two_tenants.execute("select tenant_id, name from conveyor.api_keys order by 1, 2").fetchall() == [
        {"tenant_id": "acme", "name": "ci"},
        {"tenant_id": "acme", "name": "default"},
        {"tenant_id": "globex", "name": "default"},
    ]


def test_emit_without_a_session_tenant_is_refused_for_the_application_role(
    app: Conn, two_tenants: Conn
) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as error:
        app.execute("select conveyor.emit('acme', 'crm.contact.created')")
    assert "no tenant is set for this session" in str(error.value)
    assert error.value.diag.message_hint == (
        "Call conveyor.set_tenant(<a token for 'acme'>) in the same transaction first."
    )
    assert count(two_tenants, "events") == 2


def test_dedupe_keys_do_not_reveal_another_tenants_events(app: Conn, two_tenants: Conn, acme: str) -> None:
    two_tenants.execute("select conveyor.emit('globex', 'shop.order.placed', p_dedupe_key => 'k-1')")
    with acting_for(app, acme):
        row = app.execute(
            "select conveyor.emit('acme', 'shop.order.placed', p_dedupe_key => 'k-1') as id"
        ).fetchone()
        assert row is not None
        mine = app.execute(
            "select event_id, tenant_id from conveyor.events where dedupe_key = 'k-1'"
        ).fetchall()
    assert mine == [{"event_id": row["id"], "tenant_id": "acme"}]


def test_a_platform_login_role_granted_conveyor_app_is_isolated(db_url: str, two_tenants: Conn) -> None:
    # What a platform does: grant conveyor_app to its own login role, then prove the tenant.
    two_tenants.execute(
        "do $$ begin if not exists (select from pg_roles where rolname = 'platform_app') then "
        "create role platform_app login; end if; end $$"
    )
    two_tenants.execute("grant conveyor_app to platform_app")
    globex = mint_token(two_tenants, "globex")
    with psycopg.connect(db_url, user="platform_app", autocommit=True, row_factory=dict_row) as platform:
        assert count(platform, "events") == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            platform.execute("select conveyor.emit('acme', 'crm.contact.created')")
        platform.execute("set conveyor.tenant_id = 'acme'")
        assert count(platform, "events") == 0
        with acting_for(platform, globex):
            assert platform.execute("select tenant_id from conveyor.events").fetchall() == [
                {"tenant_id": "globex"}
            ]
            assert platform.execute("select tenant_id from conveyor.tenants").fetchall() == [
                {"tenant_id": "globex"}
            ]
            platform.execute("select conveyor.emit('globex', 'crm.contact.updated')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_for(platform, globex):
            platform.execute("select conveyor.emit('acme', 'crm.contact.created')")
    assert count(two_tenants, "events", "tenant_id = 'globex'") == 2
    assert count(two_tenants, "events", "tenant_id = 'acme'") == 1
    two_tenants.execute("revoke conveyor_app from platform_app")


# --- require_tenant / current_tenant --------------------------------------------------------


def test_current_tenant_is_the_session_setting_or_null(conn: Conn) -> None:
    # For a role outside row-level security the plain setting names the tenant.
    assert conn.execute("select conveyor.current_tenant() as t").fetchone() == {"t": None}
    conn.execute("set conveyor.tenant_id = 'acme'")
    assert conn.execute("select conveyor.current_tenant() as t").fetchone() == {"t": "acme"}
    conn.execute("set conveyor.tenant_id = ''")
    assert conn.execute("select conveyor.current_tenant() as t").fetchone() == {"t": None}


def test_require_tenant_lets_roles_outside_rls_act_for_any_tenant_unless_they_set_one(
    db_url: str, conn: Conn
) -> None:
    conn.execute("select conveyor.require_tenant('acme')")  # superuser, no tenant set
    with psycopg.connect(db_url, autocommit=True) as service:
        service.execute("set role conveyor_service")
        service.execute("select conveyor.require_tenant('acme'), conveyor.require_tenant('globex')")
        service.execute("set conveyor.tenant_id = 'acme'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            service.execute("select conveyor.require_tenant('globex')")


@pytest.mark.parametrize("tenant", [None, ""])
def test_require_tenant_needs_a_tenant_id(conn: Conn, tenant: str | None) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="a tenant id is required"):
        conn.execute("select conveyor.require_tenant(%s)", (tenant,))


# --- create_tenant --------------------------------------------------------------------------


def test_create_tenant_records_name_and_timezone(conn: Conn) -> None:
    assert conn.execute(
        "select conveyor.create_tenant('acme', 'Acme Inc', 'America/New_York') as id"
    ).fetchone() == {"id": "acme"}
    conn.execute("select conveyor.create_tenant('globex', 'Globex')")
    rows = conn.execute("select tenant_id, name, timezone from conveyor.tenants order by 1").fetchall()
    assert rows == [
        {"tenant_id": "acme", "name": "Acme Inc", "timezone": "America/New_York"},
        {"tenant_id": "globex", "name": "Globex", "timezone": "UTC"},
    ]


def test_create_tenant_refuses_a_duplicate(conn: Conn) -> None:
    conn.execute("select conveyor.create_tenant('acme', 'Acme')")
    with pytest.raises(psycopg.errors.UniqueViolation, match="tenant 'acme' exists already"):
        conn.execute("select conveyor.create_tenant('acme', 'Other')")
    assert conn.execute("select name from conveyor.tenants").fetchall() == [{"name": "Acme"}]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("acme", "Acme", "Mars/Olympus"), "tenant 'acme': unknown timezone 'Mars/Olympus'"),
        (("acme", "Acme", None), "tenant 'acme': unknown timezone NULL"),
        (("acme", "Acme", ""), "tenant 'acme': unknown timezone ''"),
        (("acme", " ", "UTC"), "tenant 'acme' needs a name"),
        (("", "Acme", "UTC"), "invalid tenant id ''"),
        (("acme corp", "Acme", "UTC"), "invalid tenant id 'acme corp'"),
    ],
)
def test_create_tenant_refuses_bad_input(conn: Conn, args: tuple[str | None, ...], message: str) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue) as error:
        conn.execute("select conveyor.create_tenant(%s, %s, %s)", args)
    assert message in str(error.value)
    assert conn.execute("select count(*) as n from conveyor.tenants").fetchone() == {"n": 0}


def test_only_the_service_role_creates_tenants(db_url: str, conn: Conn) -> None:
    with psycopg.connect(db_url, autocommit=True) as session:
        session.execute("set role conveyor_app")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            session.execute("select conveyor.create_tenant('acme', 'Acme')")
        session.execute("set role conveyor_service")
        session.execute("select conveyor.create_tenant('acme', 'Acme')")
    assert conn.execute("select tenant_id from conveyor.tenants").fetchall() == [{"tenant_id": "acme"}]


def test_watch_and_unwatch_are_closed_to_the_application_role(
    app: Conn, two_tenants: Conn, acme: str
) -> None:
    two_tenants.execute("create table public.notes (id int primary key, tenant_id text)")
    two_tenants.execute("grant select, insert on public.notes to conveyor_app")
    for call in ("select conveyor.watch('public.notes', 'crm')", "select conveyor.unwatch('public.notes')"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_for(app, acme):
            app.execute(call)
    assert two_tenants.execute("select count(*) as n from conveyor.watched_tables").fetchone() == {"n": 0}


# --- functions that run as their owner -----------------------------------------------------


def test_every_security_definer_function_pins_its_search_path(conn: Conn) -> None:
    unpinned = conn.execute("""
        select p.oid::regprocedure::text as function
        from pg_proc as p join pg_namespace as n on n.oid = p.pronamespace and n.nspname = 'conveyor'
        where p.prosecdef
          and not exists (select from unnest(p.proconfig) as c where c like 'search\\_path=%%')
        """).fetchall()
    assert unpinned == []


def test_security_definer_functions_open_to_the_application_role_check_the_tenant(conn: Conn) -> None:
    # A function that runs as its owner bypasses row-level security: if the application
    # role may call it, it must call require_tenant. The two that establish the tenant are
    # the exception: set_tenant proves it from a token, current_tenant reads it; and
    # set_plan, which acts for no tenant and refuses inside a tenant's transaction.
    unchecked = conn.execute("""
        select p.oid::regprocedure::text as function
        from pg_proc as p join pg_namespace as n on n.oid = p.pronamespace and n.nspname = 'conveyor'
        where p.prosecdef and p.prorettype <> 'trigger'::regtype
          and has_function_privilege('conveyor_app', p.oid, 'execute')
          and p.prosrc not like '%%conveyor.require_tenant(%%'
        order by 1
        """).fetchall()
    assert unchecked == [
        {"function": "conveyor.current_tenant()"},
        {"function": "conveyor.set_plan(text,jsonb)"},
        {"function": "conveyor.set_tenant(text)"},
    ]


def test_every_function_of_the_application_role_that_takes_a_tenant_checks_it(conn: Conn) -> None:
    unchecked = conn.execute("""
        select p.oid::regprocedure::text as function
        from pg_proc as p join pg_namespace as n on n.oid = p.pronamespace and n.nspname = 'conveyor'
        where 'p_tenant_id' = any(p.proargnames)
          and has_function_privilege('conveyor_app', p.oid, 'execute')
          and p.prosrc not like '%%perform conveyor.require_tenant(p_tenant_id);%%'
        """).fetchall()
    assert unchecked == []


def test_no_policy_reads_a_setting_directly(conn: Conn) -> None:
    # Any client may set a setting; policies read the verified tenant only.
    direct = conn.execute("""
        select c.relname::text as table_name, pg_get_expr(p.polqual, p.polrelid) as using
        from pg_policy as p join pg_class as c on c.oid = p.polrelid
        where c.relnamespace = 'conveyor'::regnamespace
          and (pg_get_expr(p.polqual, p.polrelid) like '%%current_setting%%'
               or coalesce(pg_get_expr(p.polwithcheck, p.polrelid), '') like '%%current_setting%%')
        """).fetchall()
    assert direct == []
