"""Capture: watched tables turning inserts / updates / deletes into events, by way of the
capture log. conveyor.emit: test_emit.py; watching and unwatching tables: test_watch.py."""

from __future__ import annotations

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.sql.capture_helpers import events, forget_events, ingest

Conn = psycopg.Connection[dict[str, object]]


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
