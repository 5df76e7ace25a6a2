"""Watching tables: conveyor.watch and unwatch, what they refuse, and the capture and ingest
functions following the table as it changes."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.sql.capture_helpers import events

Conn = psycopg.Connection[dict[str, object]]


def test_altering_a_watched_table_recaptures_its_columns(contacts: Conn) -> None:
    contacts.execute("insert into crm.contacts (id, tenant_id, email) values (1, 'acme', 'a@x.test')")
    contacts.execute("alter table crm.contacts add column phone text")
    contacts.execute(
        "insert into crm.contacts (id, tenant_id, email, phone) values (2, 'acme', 'b@x.test', '555')"
    )
    contacts.execute("alter table crm.contacts drop column score")
    contacts.execute("update crm.contacts set status = 'won' where id = 2")
    payloads = [(e["event_type"], e["payload"]) for e in events(contacts)]
    assert payloads == [
        # captured before the change: described with the columns it had
        (
            "crm.contact.created",
            {"new": {"id": 1, "tenant_id": "acme", "email": "a@x.test", "status": "open", "score": None}},
        ),
        (
            "crm.contact.created",
            {
                "new": {
                    "id": 2,
                    "tenant_id": "acme",
                    "email": "b@x.test",
                    "status": "open",
                    "score": None,
                    "phone": "555",
                }
            },
        ),
        (
            "crm.contact.updated",
            {
                "old": {"id": 2, "tenant_id": "acme", "email": "b@x.test", "status": "open", "phone": "555"},
                "new": {"id": 2, "tenant_id": "acme", "email": "b@x.test", "status": "won", "phone": "555"},
                "changed": ["status"],
            },
        ),
    ]


def test_dropping_the_tenant_column_of_a_watched_table_is_refused(contacts: Conn) -> None:
    with pytest.raises(
        psycopg.errors.UndefinedColumn, match=r"watch crm.contacts: no such column: tenant_id"
    ):
        contacts.execute("alter table crm.contacts drop column tenant_id")
    contacts.execute("insert into crm.contacts (id, tenant_id, email) values (1, 'acme', 'a@x.test')")
    assert [e["event_type"] for e in events(contacts)] == ["crm.contact.created"]


def test_watch_refuses_a_table_with_a_column_the_capture_log_reserves(tenants: Conn) -> None:
    tenants.execute("create table public.odd (id bigint primary key, tenant_id text, _conveyor_op text)")
    with pytest.raises(
        psycopg.errors.DuplicateColumn, match=r"watch public.odd: the column names .* are reserved"
    ):
        tenants.execute("select conveyor.watch('public.odd', 'crm')")
    assert tenants.execute("select count(*) as n from conveyor.watched_tables").fetchone() == {"n": 0}


def test_unwatch_turns_the_rows_already_captured_into_events(contacts: Conn) -> None:
    contacts.execute("insert into crm.contacts (id, tenant_id, email) values (1, 'acme', 'a@x.test')")
    contacts.execute("select conveyor.unwatch('crm.contacts')")
    assert contacts.execute("select event_type from conveyor.events").fetchall() == [
        {"event_type": "crm.contact.created"}
    ]
    assert contacts.execute(
        "select count(*) as n from pg_class where relnamespace = 'conveyor_capture'::regnamespace"
    ).fetchone() == {"n": 0}


def test_watch_defaults_the_entity_to_the_table_name(tenants: Conn) -> None:
    tenants.execute("create table public.deals (id uuid primary key, org text not null, stage text)")
    tenants.execute("select conveyor.watch('public.deals', 'sales', p_tenant_column => 'org')")
    tenants.execute(
        "insert into public.deals values ('6f1d6a1e-0000-4000-8000-000000000001', 'acme', 'open')"
    )
    [event] = events(tenants)
    assert event["event_type"] == "sales.deals.created"
    assert event["entity_type"] == "deals"
    assert event["entity_id"] == "6f1d6a1e-0000-4000-8000-000000000001"
    watched = tenants.execute(
        "select table_name::text, module, entity, tenant_column, id_column from conveyor.watched_tables"
    ).fetchall()
    assert watched == [
        {
            "table_name": "deals",
            "module": "sales",
            "entity": "deals",
            "tenant_column": "org",
            "id_column": "id",
        }
    ]


def test_watching_again_replaces_the_capture(contacts: Conn) -> None:
    contacts.execute("select conveyor.watch('crm.contacts', 'sales', 'lead')")
    contacts.execute("insert into crm.contacts (id, tenant_id, email) values (1, 'acme', 'a@x.test')")
    assert [e["event_type"] for e in events(contacts)] == ["sales.lead.created"]
    watched = contacts.execute("select module, entity from conveyor.watched_tables").fetchall()
    assert watched == [{"module": "sales", "entity": "lead"}]
    triggers = contacts.execute(
        "select count(*) as n from pg_trigger where tgrelid = 'crm.contacts'::regclass and not tgisinternal"
    ).fetchone()
    assert triggers == {"n": 3}


def test_unwatch_stops_capture_and_forgets_the_table(contacts: Conn) -> None:
    assert contacts.execute("select conveyor.unwatch('crm.contacts') as removed").fetchone() == {
        "removed": True
    }
    contacts.execute("insert into crm.contacts (id, tenant_id, email) values (1, 'acme', 'a@x.test')")
    contacts.execute("update crm.contacts set score = 3")
    contacts.execute("delete from crm.contacts")
    assert events(contacts) == []
    assert contacts.execute("select count(*) as n from conveyor.watched_tables").fetchone() == {"n": 0}
    assert contacts.execute("select conveyor.unwatch('crm.contacts') as removed").fetchone() == {
        "removed": False
    }


def test_watch_names_the_table_and_column_that_do_not_exist(contacts: Conn) -> None:
    with pytest.raises(psycopg.errors.UndefinedColumn) as error:
        contacts.execute(
            "select conveyor.watch('crm.contacts', 'crm', 'contact', p_tenant_column => 'org_id')"
        )
    assert "watch crm.contacts: no such column: org_id (tenant column)" in str(error.value)
    with pytest.raises(psycopg.errors.UndefinedColumn) as error:
        contacts.execute(
            "select conveyor.watch('crm.contacts', 'crm', 'contact', p_id_column => 'contact_id')"
        )
    assert "watch crm.contacts: no such column: contact_id (id column)" in str(error.value)


def test_watch_refuses_bad_module_entity_and_non_tables(contacts: Conn) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="invalid module 'CRM'"):
        contacts.execute("select conveyor.watch('crm.contacts', 'CRM')")
    contacts.execute('create table crm."Leads" (id int, tenant_id text)')
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="invalid entity 'Leads'"):
        contacts.execute("select conveyor.watch('crm.\"Leads\"', 'crm')")
    contacts.execute("create view crm.open_contacts as select * from crm.contacts where status = 'open'")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="only tables can be watched"):
        contacts.execute("select conveyor.watch('crm.open_contacts', 'crm', 'contact')")
    # a failed watch leaves the existing one in place
    contacts.execute("insert into crm.contacts (id, tenant_id, email) values (1, 'acme', 'a@x.test')")
    assert [e["event_type"] for e in events(contacts)] == ["crm.contact.created"]


def test_a_partitioned_table_can_be_watched(tenants: Conn) -> None:
    tenants.execute(
        "create table public.bookings (id int, tenant_id text, day date) partition by range (day)"
    )
    tenants.execute(
        "create table public.bookings_2026 partition of public.bookings for values from ('2026-01-01') to ('2027-01-01')"
    )
    tenants.execute("select conveyor.watch('public.bookings', 'booking', 'appointment')")
    tenants.execute(
        "insert into public.bookings values (1, 'acme', '2026-05-01'), (2, 'globex', '2026-06-01')"
    )
    assert [e["event_type"] for e in events(tenants)] == ["booking.appointment.created"] * 2


def test_the_platform_role_writes_a_watched_table_without_rights_on_conveyor_tables(
    db_url: str, contacts: Conn
) -> None:
    # The platform's own role may write its table; the capture runs as Conveyor's owner.
    contacts.execute(
        "do $$ begin if not exists (select from pg_roles where rolname = 'platform_writer') then "
        "create role platform_writer; end if; end $$"
    )
    contacts.execute("grant usage on schema crm to platform_writer")
    contacts.execute("grant insert, update, delete, select on crm.contacts to platform_writer")
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as platform:
        platform.execute("set role platform_writer")
        platform.execute("insert into crm.contacts (id, tenant_id, email) values (1, 'acme', 'a@x.test')")
        platform.execute("update crm.contacts set status = 'won'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            platform.execute("select * from conveyor.events")
    assert [e["event_type"] for e in events(contacts)] == ["crm.contact.created", "crm.contact.updated"]


def test_capture_functions_pass_plpgsql_check(contacts: Conn) -> None:
    contacts.execute("create extension if not exists plpgsql_check")
    rows = contacts.execute("""
        select f.kind, c.message
        from (values ('insert', 'conveyor_new', null),
                     ('update', 'conveyor_new', 'conveyor_old'),
                     ('delete', null, 'conveyor_old')) as f (kind, newtable, oldtable)
        cross join lateral plpgsql_check_function_tb(
          ('conveyor_capture.t' || 'crm.contacts'::regclass::oid || '_' || f.kind || '()')::regprocedure,
          'crm.contacts'::regclass, newtable => f.newtable, oldtable => f.oldtable,
          fatal_errors => false, extra_warnings => false, performance_warnings => false
        ) as c
        where c.level = 'error'
        """).fetchall()
    assert rows == []
    ingest = contacts.execute(
        "select c.message from plpgsql_check_function_tb("
        " ('conveyor_capture.t' || 'crm.contacts'::regclass::oid || '_ingest(integer, text, text, text)')"
        "::regprocedure, fatal_errors => false, extra_warnings => false, performance_warnings => false) as c"
        " where c.level = 'error'"
    ).fetchall()
    assert ingest == []
    # the four generated functions (three triggers, the log's ingest) exist and were checked
    assert contacts.execute(
        "select count(*) as n from pg_proc where pronamespace = 'conveyor_capture'::regnamespace"
    ).fetchone() == {"n": 4}


def test_a_table_watched_before_ingest_functions_existed_gets_one_on_its_first_ingest(contacts: Conn) -> None:
    # a database upgraded from a version without generated ingest functions
    contacts.execute(
        "do $$ begin execute format('drop function conveyor_capture.%I(integer, text, text, text)',"
        " 't' || 'crm.contacts'::regclass::oid || '_ingest'); end $$"
    )
    contacts.execute("insert into crm.contacts (id, tenant_id, email) values (1, 'acme', 'a@example.com')")
    assert [e["event_type"] for e in events(contacts)] == ["crm.contact.created"]
    assert contacts.execute(
        "select to_regprocedure('conveyor_capture.t' || 'crm.contacts'::regclass::oid"
        " || '_ingest(integer, text, text, text)') is not null as ok"
    ).fetchone() == {"ok": True}


def test_the_ingest_function_follows_the_tables_columns(contacts: Conn) -> None:
    contacts.execute("alter table crm.contacts add column phone text")
    contacts.execute(
        "insert into crm.contacts (id, tenant_id, email, phone) values (2, 'acme', 'b@example.com', '+1')"
    )
    contacts.execute("select conveyor.watch('crm.contacts', 'crm', 'contact')")  # without the event trigger
    contacts.execute(
        "insert into crm.contacts (id, tenant_id, email, phone) values (3, 'acme', 'c@example.com', '+2')"
    )
    payloads = [e["payload"] for e in events(contacts)]
    assert [p["new"].get("phone") for p in payloads] == ["+1", "+2"]
