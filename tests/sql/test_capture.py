"""Capture: conveyor.emit and watched tables turning inserts / updates / deletes into events."""

from __future__ import annotations

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.rows import dict_row

Conn = psycopg.Connection[dict[str, object]]

EVENTS = """
select event_type, tenant_id, source, entity_type, entity_id, payload, changed_columns, depth
from conveyor.events order by event_id
"""


@pytest.fixture
def tenants(conn: Conn) -> Conn:
    conn.execute("select conveyor.create_tenant('acme', 'Acme'), conveyor.create_tenant('globex', 'Globex')")
    return conn


@pytest.fixture
def contacts(tenants: Conn) -> Conn:
    """A platform table crm.contacts, watched as crm.contact.*."""
    tenants.execute("create schema crm")
    tenants.execute("""
        create table crm.contacts (
          id bigint primary key,
          tenant_id text not null,
          email text not null,
          status text not null default 'open',
          score integer
        )""")
    tenants.execute("select conveyor.watch('crm.contacts', 'crm', 'contact')")
    return tenants


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


# --- emit --------------------------------------------------------------------------------


def test_emit_inserts_an_event_and_returns_its_id(tenants: Conn) -> None:
    event_id = tenants.execute(
        "select conveyor.emit('acme', 'billing.invoice.paid', '{\"amount\": 120}', 'invoice', 'inv-7',"
        " p_source => 'billing') as id"
    ).fetchone()
    assert event_id is not None
    row = tenants.execute("select * from conveyor.events where event_id = %s", (event_id["id"],)).fetchone()
    assert row is not None
    assert row["tenant_id"] == "acme"
    assert row["event_type"] == "billing.invoice.paid"
    assert row["payload"] == {"amount": 120}
    assert (row["entity_type"], row["entity_id"], row["source"]) == ("invoice", "inv-7", "billing")
    assert row["depth"] == 0
    assert row["dispatched_at"] is None


def test_emit_with_the_same_dedupe_key_returns_the_first_event_and_inserts_nothing(tenants: Conn) -> None:
    first = tenants.execute(
        "select conveyor.emit('acme', 'shop.order.placed', '{\"n\": 1}', p_dedupe_key => 'order-1') as id"
    ).fetchone()
    second = tenants.execute(
        "select conveyor.emit('acme', 'shop.order.placed', '{\"n\": 2}', p_dedupe_key => 'order-1') as id"
    ).fetchone()
    other_tenant = tenants.execute(
        "select conveyor.emit('globex', 'shop.order.placed', '{\"n\": 3}', p_dedupe_key => 'order-1') as id"
    ).fetchone()
    assert first is not None and second is not None and other_tenant is not None
    assert second["id"] == first["id"]
    assert other_tenant["id"] != first["id"]
    rows = tenants.execute("select tenant_id, payload from conveyor.events order by event_id").fetchall()
    assert rows == [{"tenant_id": "acme", "payload": {"n": 1}}, {"tenant_id": "globex", "payload": {"n": 3}}]


def test_emit_without_a_dedupe_key_never_deduplicates(tenants: Conn) -> None:
    for _ in range(3):
        tenants.execute("select conveyor.emit('acme', 'shop.order.placed')")
    count = tenants.execute("select count(*) as n from conveyor.events").fetchone()
    assert count == {"n": 3}


@pytest.mark.parametrize(
    "event_type",
    [
        "contact.created",
        "crm.contact.created.now",
        "CRM.contact.created",
        "crm..created",
        "crm.contact-x.created",
        "",
    ],
)
def test_emit_refuses_an_event_type_that_is_not_module_entity_action(tenants: Conn, event_type: str) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue) as error:
        tenants.execute("select conveyor.emit('acme', %s)", (event_type,))
    assert f"invalid event type '{event_type}'" in str(error.value)
    assert error.value.diag.message_hint is not None
    assert "crm.contact.created" in error.value.diag.message_hint


def test_emit_refuses_a_payload_that_is_not_an_object(tenants: Conn) -> None:
    with pytest.raises(
        psycopg.errors.InvalidParameterValue, match="payload must be a JSON object, not array"
    ):
        tenants.execute("select conveyor.emit('acme', 'crm.contact.created', '[1, 2]')")


def test_emit_refuses_a_payload_over_its_size_limit_and_stores_nothing(tenants: Conn) -> None:
    tenants.execute("set conveyor.max_event_payload_bytes = 10000")
    tenants.execute(
        "select conveyor.emit('acme', 'crm.note.added', jsonb_build_object('text', repeat('x', 9000)))"
    )
    with pytest.raises(psycopg.errors.ProgramLimitExceeded) as refused:
        tenants.execute(
            "select conveyor.emit('acme', 'crm.note.added', jsonb_build_object('text', repeat('x', 20000)))"
        )
    assert "event crm.note.added: the payload takes" in str(refused.value)
    assert "over the limit of 10000 (setting conveyor.max_event_payload_bytes)" in str(refused.value)
    tenants.rollback()
    # only the payload under the limit was stored
    assert tenants.execute("select count(*) as n from conveyor.events").fetchone() == {"n": 1}


def test_emit_refuses_an_unknown_tenant(tenants: Conn) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="unknown tenant 'initech'"):
        tenants.execute("select conveyor.emit('initech', 'crm.contact.created')")


def test_emit_wakes_runners(db_url: str, tenants: Conn) -> None:
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("listen conveyor_wakeup")
        tenants.execute("select conveyor.emit('acme', 'crm.contact.created')")
        received = list(listener.notifies(timeout=5, stop_after=1))
    assert [(n.channel, n.payload) for n in received] == [("conveyor_wakeup", "event")]


def test_emit_in_a_rolled_back_transaction_leaves_no_event(db_url: str, tenants: Conn) -> None:
    with psycopg.connect(db_url) as tx:
        tx.execute("select conveyor.emit('acme', 'crm.contact.created')")
        tx.rollback()
    assert events(tenants) == []


# --- watch: inserts, updates, deletes -------------------------------------------------------


def test_insert_into_a_watched_table_captures_created_events(contacts: Conn) -> None:
    contacts.execute(
        "insert into crm.contacts (id, tenant_id, email) values (1, 'acme', 'a@x.test'), (2, 'globex', 'b@y.test')"
    )
    assert events(contacts) == [
        {
            "event_type": "crm.contact.created",
            "tenant_id": "acme",
            "source": "crm",
            "entity_type": "contact",
            "entity_id": "1",
            "payload": {
                "new": {"id": 1, "tenant_id": "acme", "email": "a@x.test", "status": "open", "score": None}
            },
            "changed_columns": None,
            "depth": 0,
        },
        {
            "event_type": "crm.contact.created",
            "tenant_id": "globex",
            "source": "crm",
            "entity_type": "contact",
            "entity_id": "2",
            "payload": {
                "new": {"id": 2, "tenant_id": "globex", "email": "b@y.test", "status": "open", "score": None}
            },
            "changed_columns": None,
            "depth": 0,
        },
    ]


def test_an_update_carries_old_new_and_the_changed_columns_in_table_order(contacts: Conn) -> None:
    contacts.execute(
        "insert into crm.contacts (id, tenant_id, email, score) values (1, 'acme', 'a@x.test', 5)"
    )
    forget_events(contacts)
    contacts.execute("update crm.contacts set score = 9, status = 'won' where id = 1")
    [event] = events(contacts)
    assert event["event_type"] == "crm.contact.updated"
    assert event["entity_id"] == "1"
    assert event["changed_columns"] == ["status", "score"]
    assert event["payload"] == {
        "old": {"id": 1, "tenant_id": "acme", "email": "a@x.test", "status": "open", "score": 5},
        "new": {"id": 1, "tenant_id": "acme", "email": "a@x.test", "status": "won", "score": 9},
        "changed": ["status", "score"],
    }


def test_setting_a_column_to_null_counts_as_a_change(contacts: Conn) -> None:
    contacts.execute(
        "insert into crm.contacts (id, tenant_id, email, score) values (1, 'acme', 'a@x.test', 5)"
    )
    forget_events(contacts)
    contacts.execute("update crm.contacts set score = null")
    [event] = events(contacts)
    assert event["changed_columns"] == ["score"]


def test_an_update_that_changes_nothing_captures_no_event(contacts: Conn) -> None:
    contacts.execute("insert into crm.contacts (id, tenant_id, email) values (1, 'acme', 'a@x.test')")
    forget_events(contacts)
    contacts.execute("update crm.contacts set email = email, status = 'open'")
    assert events(contacts) == []


def test_a_multi_row_update_captures_only_the_rows_that_changed(contacts: Conn) -> None:
    contacts.execute(
        "insert into crm.contacts (id, tenant_id, email, status) "
        "select g, 'acme', 'c' || g || '@x.test', case when g % 2 = 0 then 'won' else 'open' end "
        "from generate_series(1, 10) as g"
    )
    forget_events(contacts)
    contacts.execute("update crm.contacts set status = 'won'")
    rows = events(contacts)
    assert sorted(int(str(e["entity_id"])) for e in rows) == [1, 3, 5, 7, 9]
    assert {e["event_type"] for e in rows} == {"crm.contact.updated"}


def test_an_update_of_the_id_is_captured_as_deleted_and_created(contacts: Conn) -> None:
    contacts.execute("insert into crm.contacts (id, tenant_id, email) values (1, 'acme', 'a@x.test')")
    forget_events(contacts)
    contacts.execute("update crm.contacts set id = 2 where id = 1")
    rows = sorted(events(contacts), key=lambda e: str(e["event_type"]))
    assert [(e["event_type"], e["entity_id"]) for e in rows] == [
        ("crm.contact.created", "2"),
        ("crm.contact.deleted", "1"),
    ]
    assert [e["changed_columns"] for e in rows] == [None, None]


def test_moving_a_row_to_another_tenant_is_captured_as_deleted_and_created(contacts: Conn) -> None:
    contacts.execute("insert into crm.contacts (id, tenant_id, email) values (1, 'acme', 'a@x.test')")
    forget_events(contacts)
    contacts.execute("update crm.contacts set tenant_id = 'globex', email = 'b@y.test' where id = 1")
    rows = sorted(events(contacts), key=lambda e: str(e["event_type"]))
    assert [(e["event_type"], e["tenant_id"]) for e in rows] == [
        ("crm.contact.created", "globex"),
        ("crm.contact.deleted", "acme"),
    ]
    created, deleted = rows
    assert created["payload"] == {
        "new": {"id": 1, "tenant_id": "globex", "email": "b@y.test", "status": "open", "score": None}
    }
    assert deleted["payload"] == {
        "old": {"id": 1, "tenant_id": "acme", "email": "a@x.test", "status": "open", "score": None}
    }


def test_delete_captures_deleted_events_with_the_old_row(contacts: Conn) -> None:
    contacts.execute("insert into crm.contacts (id, tenant_id, email) values (1, 'acme', 'a@x.test')")
    forget_events(contacts)
    contacts.execute("delete from crm.contacts where id = 1")
    [event] = events(contacts)
    assert event["event_type"] == "crm.contact.deleted"
    assert event["payload"] == {
        "old": {"id": 1, "tenant_id": "acme", "email": "a@x.test", "status": "open", "score": None}
    }
    assert event["changed_columns"] is None


def test_rows_of_unknown_or_null_tenants_are_not_captured_and_the_write_succeeds(contacts: Conn) -> None:
    contacts.execute("alter table crm.contacts alter column tenant_id drop not null")
    contacts.execute(
        "insert into crm.contacts (id, tenant_id, email) "
        "values (1, 'acme', 'a@x.test'), (2, 'initech', 'b@x.test'), (3, null, 'c@x.test')"
    )
    assert [e["entity_id"] for e in events(contacts)] == ["1"]
    assert contacts.execute("select count(*) as n from crm.contacts").fetchone() == {"n": 3}


def test_a_rolled_back_platform_transaction_leaves_no_event(db_url: str, contacts: Conn) -> None:
    with psycopg.connect(db_url) as tx:
        tx.execute("insert into crm.contacts (id, tenant_id, email) values (1, 'acme', 'a@x.test')")
        tx.execute("insert into crm.contacts (id, tenant_id, email) values (2, 'acme', 'b@x.test')")
        log = tx.execute("select conveyor.capture_log('crm.contacts')").fetchone()
        assert log is not None
        assert tx.execute(f"select count(*) from {log[0]}").fetchone() == (2,)
        tx.rollback()
    assert events(contacts) == []
    contacts.execute("begin")
    contacts.execute("insert into crm.contacts (id, tenant_id, email) values (3, 'acme', 'c@x.test')")
    contacts.execute("savepoint s")
    contacts.execute("update crm.contacts set status = 'won'")
    contacts.execute("rollback to savepoint s")
    contacts.execute("commit")
    assert [e["event_type"] for e in events(contacts)] == ["crm.contact.created"]


def test_a_bulk_insert_of_10000_rows_captures_10000_events_with_one_insert_statement(contacts: Conn) -> None:
    # Statement-level triggers on the capture log and on conveyor.events count the insert
    # statements that reach them and the rows each carried: capturing must be one statement
    # per platform statement, and turning the log into events one statement per ingest.
    log = contacts.execute("select conveyor.capture_log('crm.contacts') as log").fetchone()
    assert log is not None
    contacts.execute("create table public.inserts (target text not null, rows bigint not null)")
    contacts.execute("""
        create function public.count_inserts() returns trigger language plpgsql as $$
        begin
          insert into public.inserts select tg_table_schema, count(*) from new_rows;
          return null;
        end $$""")
    for table in (log["log"], "conveyor.events"):
        contacts.execute(
            f"create trigger count_inserts after insert on {table} referencing new table as new_rows "
            "for each statement execute function public.count_inserts()"
        )
    contacts.execute(
        "insert into crm.contacts (id, tenant_id, email) "
        "select g, case when g % 2 = 0 then 'acme' else 'globex' end, 'c' || g || '@x.test' "
        "from generate_series(1, 10000) as g"
    )
    assert contacts.execute("select target, rows from public.inserts").fetchall() == [
        {"target": "conveyor_capture", "rows": 10000}
    ]
    assert ingest(contacts) == 10000
    summary = contacts.execute(
        "select count(*) as n, count(distinct entity_id) as ids, count(*) filter (where tenant_id = 'acme') as acme "
        "from conveyor.events where event_type = 'crm.contact.created'"
    ).fetchone()
    assert summary == {"n": 10000, "ids": 10000, "acme": 5000}

    contacts.execute("update crm.contacts set score = 1 where id <= 2500")  # old and new rows
    contacts.execute("delete from crm.contacts where id > 7500")
    assert ingest(contacts) == 5000
    assert contacts.execute("select target, rows from public.inserts order by target, rows").fetchall() == [
        {"target": "conveyor", "rows": 5000},
        {"target": "conveyor", "rows": 10000},
        {"target": "conveyor_capture", "rows": 2500},
        {"target": "conveyor_capture", "rows": 5000},
        {"target": "conveyor_capture", "rows": 10000},
    ]


def test_one_wakeup_per_statement_and_one_per_transaction(db_url: str, contacts: Conn) -> None:
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("listen conveyor_wakeup")
        contacts.execute(
            "insert into crm.contacts (id, tenant_id, email) select g, 'acme', 'x' from generate_series(1, 500) g"
        )
        with contacts.transaction():
            contacts.execute("update crm.contacts set score = 1")
            contacts.execute("delete from crm.contacts where id > 250")
        contacts.execute("update crm.contacts set score = 1 where id < 0")  # no row: no wakeup
        received = list(listener.notifies(timeout=2))
    assert [(n.channel, n.payload) for n in received] == [("conveyor_wakeup", "event")] * 2


# --- the capture log: rows wait there until dispatch turns them into events -------------


def test_captured_rows_become_events_when_dispatch_runs(contacts: Conn) -> None:
    contacts.execute("insert into crm.contacts (id, tenant_id, email) values (1, 'acme', 'a@x.test')")
    # the platform's statement only copied the row into the log
    assert contacts.execute("select count(*) as n from conveyor.events").fetchone() == {"n": 0}
    contacts.execute("select conveyor.dispatch()")
    row = contacts.execute(
        "select event_type, dispatched_at is not null as done from conveyor.events"
    ).fetchone()
    assert row == {"event_type": "crm.contact.created", "done": True}
    log = contacts.execute("select conveyor.capture_log('crm.contacts') as t").fetchone()
    assert log is not None
    assert contacts.execute(f"select count(*) as n from {log['t']}").fetchone() == {"n": 0}


def test_occurred_at_is_the_time_of_the_platform_transaction(contacts: Conn) -> None:
    contacts.execute("begin")
    written = contacts.execute("select now() as t").fetchone()
    contacts.execute("insert into crm.contacts (id, tenant_id, email) values (1, 'acme', 'a@x.test')")
    contacts.execute("commit")
    ingest(contacts)
    event = contacts.execute("select occurred_at from conveyor.events").fetchone()
    assert written is not None and event == {"occurred_at": written["t"]}


def test_an_update_larger_than_the_ingest_batch_keeps_its_old_and_new_rows_paired(contacts: Conn) -> None:
    contacts.execute(
        "insert into crm.contacts (id, tenant_id, email) select g, 'acme', 'x' from generate_series(1, 3000) g"
    )
    forget_events(contacts)
    contacts.execute("update crm.contacts set score = 7")
    # a batch of 1000 rows takes the whole 6000-row statement: no old row without its new one
    assert contacts.execute("select conveyor.ingest_captures(1000) as n").fetchone() == {"n": 3000}
    kinds = contacts.execute("select event_type, count(*) as n from conveyor.events group by 1").fetchall()
    assert kinds == [{"event_type": "crm.contact.updated", "n": 3000}]


def test_concurrent_ingests_turn_each_captured_row_into_one_event(db_url: str, contacts: Conn) -> None:
    contacts.execute(
        "insert into crm.contacts (id, tenant_id, email) select g, 'acme', 'x' from generate_series(1, 500) g"
    )
    with psycopg.connect(db_url) as first, psycopg.connect(db_url, autocommit=True) as second:
        assert first.execute("select conveyor.ingest_captures(100000)").fetchone() == (500,)
        # the first ingest holds the table until it commits: the second skips it
        assert second.execute("select conveyor.ingest_captures(100000)").fetchone() == (0,)
        first.commit()
        assert second.execute("select conveyor.ingest_captures(100000)").fetchone() == (0,)
    assert contacts.execute(
        "select count(distinct entity_id) as ids, count(*) as n from conveyor.events"
    ).fetchone() == {
        "ids": 500,
        "n": 500,
    }


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


# --- property: the captured events replay to the table's state ---------------------------

TENANT_IDS = ["acme", "globex", "initech"]  # initech is unknown to Conveyor: never captured
COLUMNS = ["id", "tenant_id", "email", "status", "score"]  # table order

statements = st.one_of(
    st.builds(
        lambda ids, tenant: (
            "insert into crm.contacts (id, tenant_id, email) select g, %s, 'c' || g || '@x.test' "
            "from unnest(%s::bigint[]) as g on conflict (id) do nothing",
            (tenant, ids),
        ),
        st.lists(st.integers(1, 30), min_size=1, max_size=8, unique=True),
        st.sampled_from(TENANT_IDS),
    ),
    st.builds(
        lambda m, r: ("update crm.contacts set score = coalesce(score, 0) + 1 where id %% %s = %s", (m, r)),
        st.integers(2, 4),
        st.integers(0, 1),
    ),
    st.builds(
        lambda m, status: (
            "update crm.contacts set status = %s, score = case when id %% 2 = 0 then score else 7 end "
            "where id %% %s = 0",
            (status, m),
        ),
        st.integers(1, 3),
        st.sampled_from(["open", "won"]),
    ),
    st.builds(
        lambda i, tenant: ("update crm.contacts set tenant_id = %s where id = %s", (tenant, i)),
        st.integers(1, 30),
        st.sampled_from(TENANT_IDS),
    ),
    st.builds(
        lambda i: (
            "update crm.contacts set id = id + 100 where id = %s and not exists "
            "(select from crm.contacts where id = %s + 100)",
            (i, i),
        ),
        st.integers(1, 30),
    ),
    st.builds(
        lambda m, r: ("delete from crm.contacts where id %% %s = %s", (m, r)),
        st.integers(3, 6),
        st.integers(0, 2),
    ),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=st.lists(statements, min_size=1, max_size=12))
def test_replaying_the_captured_events_rebuilds_the_watched_rows(
    contacts: Conn, script: list[tuple[str, tuple[object, ...]]]
) -> None:
    contacts.execute("truncate crm.contacts")
    forget_events(contacts)
    for statement, params in script:
        contacts.execute(statement, params)

    state: dict[tuple[object, str], object] = {}
    for event in events(contacts):
        payload = event["payload"]
        assert isinstance(payload, dict)
        key = (event["tenant_id"], str(event["entity_id"]))
        action = str(event["event_type"]).rsplit(".", 1)[1]
        if action == "created":
            assert key not in state
            state[key] = payload["new"]
        elif action == "updated":
            assert state.get(key) == payload["old"]
            assert payload["old"] != payload["new"]
            assert payload["changed"] == event["changed_columns"]
            assert payload["changed"] == [c for c in COLUMNS if payload["new"][c] != payload["old"][c]]
            state[key] = payload["new"]
        else:
            assert state.pop(key) == payload["old"]

    rows = contacts.execute(
        "select tenant_id, id::text as id, to_jsonb(c) as row from crm.contacts as c "
        "where tenant_id in ('acme', 'globex')"
    ).fetchall()
    assert state == {(r["tenant_id"], r["id"]): r["row"] for r in rows}
