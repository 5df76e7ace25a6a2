"""What an event did (sql/events_explain.sql): conveyor.explain_event and conveyor.list_events."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.sql.dispatch_helpers import add_tenant, emit, publish
from tests.sql.poison import poison_on
from tests.sql.table_stats import table_counters
from tests.sql.tenant_context import acting_for
from tests.sql.workflow_documents import AWAIT_REPLY

Conn = psycopg.Connection[dict[str, Any]]


def explain(conn: Conn, event_id: int, tenant_id: str = "acme") -> dict[str, Any]:
    row = conn.execute("select conveyor.explain_event(%s, %s) as e", (tenant_id, event_id)).fetchone()
    assert row is not None
    return dict(row["e"])


def listed(conn: Conn, tenant_id: str = "acme", event_type: str | None = None) -> list[dict[str, Any]]:
    return conn.execute(
        "select event_id, event_type, started, resumed, reasons, outcome from conveyor.list_events(%s, %s)",
        (tenant_id, event_type),
    ).fetchall()


def dispatch(conn: Conn) -> None:
    conn.execute("select conveyor.dispatch()")


def awaiting_reply(conn: Conn) -> None:
    """acme's await-reply workflow: a new contact waits for a reply correlated by entity id."""
    add_tenant(conn, "acme")
    publish(conn, "acme", "await-reply", {"event": "crm.contact.created"}, steps=AWAIT_REPLY)


def test_an_event_that_started_an_execution(conn: Conn) -> None:
    add_tenant(conn, "acme")
    publish(conn, "acme", "greet", {"event": "crm.contact.created"})
    event = emit(conn, "acme", "crm.contact.created", {"name": "Ada"}, entity_type="contact", entity_id="42")
    dispatch(conn)

    shown = explain(conn, event)
    execution = conn.execute("select execution_id from conveyor.executions").fetchone()
    assert execution is not None
    assert shown["started"] == [
        {
            "execution_id": execution["execution_id"],
            "workflow": "greet",
            "version": 1,
            "status": "completed",
            "current_step": None,
            "error": None,
        }
    ]
    assert shown["resumed"] == [] and shown["reasons"] == []
    assert shown["outcome"] == "started 1"
    assert shown["event"]["event_type"] == "crm.contact.created"
    assert shown["event"]["entity_id"] == "42" and shown["event"]["payload"] == {"name": "Ada"}
    assert shown["event"]["dispatched_at"] is not None and "tenant_id" not in shown["event"]
    assert listed(conn) == [
        {
            "event_id": event,
            "event_type": "crm.contact.created",
            "started": 1,
            "resumed": 0,
            "reasons": [],
            "outcome": "started 1",
        }
    ]


def test_a_retry_is_not_counted_as_started_by_the_event(conn: Conn) -> None:
    add_tenant(conn, "acme")
    publish(
        conn, "acme", "greet", {"event": "crm.contact.created"}, steps=[{"id": "w", "delay": {"for": "1h"}}]
    )
    event = emit(conn, "acme", "crm.contact.created")
    dispatch(conn)
    first = conn.execute("select execution_id from conveyor.executions").fetchone()
    assert first is not None
    conn.execute("select conveyor.cancel_execution('acme', %s)", (first["execution_id"],))
    conn.execute("select conveyor.retry_execution('acme', %s)", (first["execution_id"],))
    # the retry carries the event's id, but the event started only the first execution
    assert conn.execute(
        "select count(*) as n from conveyor.executions where event_id = %s", (event,)
    ).fetchone() == {"n": 2}
    shown = explain(conn, event)
    assert [(x["execution_id"], x["status"]) for x in shown["started"]] == [
        (first["execution_id"], "cancelled")
    ]


def test_an_event_that_resumed_a_wait(conn: Conn) -> None:
    awaiting_reply(conn)
    emit(conn, "acme", "crm.contact.created", entity_type="contact", entity_id="42")
    dispatch(conn)
    reply = emit(conn, "acme", "email.reply.received", entity_type="contact", entity_id="42")
    dispatch(conn)

    shown = explain(conn, reply)
    waiting = conn.execute("select execution_id, status from conveyor.executions").fetchone()
    assert waiting is not None and waiting["status"] == "completed"
    assert [
        (r["execution_id"], r["workflow"], r["version"], r["step_id"], r["visit"], r["status"])
        for r in shown["resumed"]
    ] == [(waiting["execution_id"], "await-reply", 1, "wait", 1, "completed")]
    assert shown["resumed"][0]["resumed_at"] is not None
    assert shown["started"] == [] and shown["reasons"] == []
    assert shown["outcome"] == "resumed 1"
    assert [(e["event_type"], e["started"], e["resumed"], e["outcome"]) for e in listed(conn)] == [
        ("email.reply.received", 0, 1, "resumed 1"),
        ("crm.contact.created", 1, 0, "started 1"),
    ]


def test_a_wait_that_took_an_earlier_event_by_looking_back_is_shown(conn: Conn) -> None:
    # The reply came after the trigger but before the wait began: the wait's start took it
    # (looking back to the trigger), not the reply's dispatch.
    awaiting_reply(conn)
    emit(conn, "acme", "crm.contact.created", entity_type="contact", entity_id="42")
    reply = emit(conn, "acme", "email.reply.received", entity_type="contact", entity_id="42")
    conn.execute("select conveyor.dispatch(1)")
    assert explain(conn, reply)["outcome"] == "resumed 1; pending"
    dispatch(conn)
    assert conn.execute("select status from conveyor.executions").fetchone() == {"status": "completed"}
    shown = explain(conn, reply)
    assert [r["step_id"] for r in shown["resumed"]] == ["wait"]
    assert shown["reasons"] == [] and shown["outcome"] == "resumed 1"


def test_a_wait_confirmed_by_a_later_tick_is_shown(db_url: str, conn: Conn) -> None:
    # The reply's dispatch ran while the wait was not committed: the next tick's confirmation
    # resumed it, in a transaction of its own.
    awaiting_reply(conn)
    emit(conn, "acme", "crm.contact.created", entity_type="contact", entity_id="42")
    with psycopg.connect(db_url, row_factory=dict_row) as registering:
        registering.execute("select conveyor.dispatch()")
        reply = emit(conn, "acme", "email.reply.received", entity_type="contact", entity_id="42")
        dispatch(conn)
        registering.commit()
    assert explain(conn, reply)["resumed"] == []
    conn.execute("select conveyor.tick()")
    shown = explain(conn, reply)
    assert [(r["step_id"], r["status"]) for r in shown["resumed"]] == [("wait", "completed")]


def test_an_event_that_matched_no_wait(conn: Conn) -> None:
    awaiting_reply(conn)
    emit(conn, "acme", "crm.contact.created", entity_type="contact", entity_id="42")
    dispatch(conn)
    stray = emit(conn, "acme", "email.reply.received", entity_type="contact", entity_id="7")
    dispatch(conn)

    shown = explain(conn, stray)
    assert shown["started"] == [] and shown["resumed"] == []
    assert [(r["reason"], r["level"], r["workflow"]) for r in shown["reasons"]] == [
        ("no_wait_matched", "info", None)
    ]
    assert "resumed no execution: no wait for it matched its correlation" in shown["reasons"][0]["message"]
    assert shown["outcome"] == "nothing: no_wait_matched"
    assert listed(conn, event_type="email.reply.received") == [
        {
            "event_id": stray,
            "event_type": "email.reply.received",
            "started": 0,
            "resumed": 0,
            "reasons": ["no_wait_matched"],
            "outcome": "nothing: no_wait_matched",
        }
    ]


def test_an_event_refused_by_a_workflows_rate_limit(conn: Conn) -> None:
    add_tenant(conn, "acme")
    publish(
        conn, "acme", "limited", {"event": "crm.contact.created"}, settings={"max_executions_per_hour": 1}
    )
    publish(conn, "acme", "greet", {"event": "crm.contact.created"})
    first = emit(conn, "acme", "crm.contact.created")
    second = emit(conn, "acme", "crm.contact.created")
    dispatch(conn)

    assert sorted(x["workflow"] for x in explain(conn, first)["started"]) == ["greet", "limited"]
    shown = explain(conn, second)
    assert [x["workflow"] for x in shown["started"]] == ["greet"]
    assert [(r["reason"], r["workflow"], r["level"]) for r in shown["reasons"]] == [
        ("rate_limit", "limited", "info")
    ]
    assert "reached its limit of 1 executions per hour" in shown["reasons"][0]["message"]
    assert shown["outcome"] == "started 1; rate_limit"


def test_an_event_refused_by_a_tenant_budget(conn: Conn) -> None:
    add_tenant(conn, "acme")
    conn.execute("set conveyor.max_tenant_events_per_minute = 1")
    publish(conn, "acme", "greet", {"event": "crm.contact.created"})
    allowed = emit(conn, "acme", "crm.contact.created")
    refused = emit(conn, "acme", "crm.contact.created")
    dispatch(conn)

    assert explain(conn, allowed)["outcome"] == "started 1"
    shown = explain(conn, refused)
    assert shown["started"] == []
    assert [(r["reason"], r["details"]["limit"]) for r in shown["reasons"]] == [("tenant_event_rate", 1)]
    assert shown["outcome"] == "nothing: tenant_event_rate"


def test_an_event_that_could_not_be_dispatched_and_one_past_the_depth_limit(conn: Conn) -> None:
    add_tenant(conn, "acme")
    publish(conn, "acme", "greet", {"event": "crm.contact.created"})
    poison_on(conn, "executions")
    poisoned = emit(conn, "acme", "crm.contact.created", {"name": "poison"})
    conn.execute("set conveyor.max_event_depth = 0")
    conn.execute(
        "insert into conveyor.events (tenant_id, event_type, depth) values ('acme', 'crm.contact.created', 1)"
    )
    deep = conn.execute("select max(event_id) as id from conveyor.events").fetchone()
    assert deep is not None
    dispatch(conn)

    shown = explain(conn, poisoned)
    assert [(r["reason"], r["level"], r["details"]["sqlstate"]) for r in shown["reasons"]] == [
        ("dispatch_error", "error", "22003")
    ]
    assert "dispatching it failed: poisoned row" in shown["reasons"][0]["message"]
    assert shown["outcome"] == "nothing: dispatch_error"
    shown = explain(conn, deep["id"])
    assert [(r["reason"], r["details"]["depth"], r["details"]["limit"]) for r in shown["reasons"]] == [
        ("depth_limit", 1, 0)
    ]
    assert shown["outcome"] == "nothing: depth_limit"


def test_an_event_no_trigger_matched_and_one_not_dispatched_yet(conn: Conn) -> None:
    add_tenant(conn, "acme")
    publish(conn, "acme", "greet", {"event": "crm.contact.created"})
    ignored = emit(conn, "acme", "crm.deal.won")
    dispatch(conn)
    pending = emit(conn, "acme", "crm.contact.created")

    assert explain(conn, ignored)["outcome"] == "nothing: no trigger matched"
    shown = explain(conn, pending)
    assert shown["outcome"] == "pending" and shown["event"]["dispatched_at"] is None
    assert [e["outcome"] for e in listed(conn)] == ["pending", "nothing: no trigger matched"]


def test_another_tenants_event_is_not_visible(conn: Conn) -> None:
    add_tenant(conn, "acme")
    add_tenant(conn, "globex")
    publish(conn, "acme", "greet", {"event": "crm.contact.created"})
    theirs = emit(conn, "acme", "crm.contact.created")
    ours = emit(conn, "globex", "crm.contact.created")
    dispatch(conn)

    with pytest.raises(
        psycopg.errors.InvalidParameterValue, match=f'event {theirs} does not exist for tenant "globex"'
    ):
        explain(conn, theirs, "globex")
    assert [e["event_id"] for e in listed(conn, "globex")] == [ours]
    assert explain(conn, ours, "globex")["outcome"] == "nothing: no trigger matched"


def test_the_application_role_explains_only_its_tenants_events(
    app: Conn, two_tenants: Conn, acme: str
) -> None:
    events = {
        r["tenant_id"]: r["event_id"]
        for r in two_tenants.execute("select tenant_id, event_id from conveyor.events").fetchall()
    }
    with acting_for(app, acme):
        assert explain(app, events["acme"])["event"]["payload"] == {"secret": "of-acme"}
        assert [e["event_id"] for e in listed(app)] == [events["acme"]]
    with (
        acting_for(app, acme),
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="not this session's tenant"),
    ):
        explain(app, events["globex"], "globex")
    with (
        acting_for(app, acme),
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="not this session's tenant"),
    ):
        listed(app, "globex")


@pytest.mark.parametrize("limit", [0, 1001, None])
def test_a_list_limit_out_of_range_is_refused(conn: Conn, limit: int | None) -> None:
    add_tenant(conn, "acme")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="out of range: list 1 to 1000 events"):
        conn.execute("select * from conveyor.list_events('acme', null, %s)", (limit,))


def test_the_list_is_newest_first_limited_and_filtered_by_type(conn: Conn) -> None:
    add_tenant(conn, "acme")
    ids = [emit(conn, "acme", t) for t in ("crm.contact.created", "crm.deal.won", "crm.contact.created")]
    rows = conn.execute("select event_id from conveyor.list_events('acme', null, 2)").fetchall()
    assert [r["event_id"] for r in rows] == [ids[2], ids[1]]
    assert [e["event_id"] for e in listed(conn, event_type="crm.contact.created")] == [ids[2], ids[0]]


def test_explaining_an_event_reads_only_its_own_rows(conn: Conn) -> None:
    # 3,000 earlier events started executions and were refused by a rate limit: explaining
    # a later one finds its executions and reasons by index, not by reading those.
    add_tenant(conn, "acme")
    publish(conn, "acme", "greet", {"event": "crm.contact.created"})
    publish(
        conn, "acme", "limited", {"event": "crm.contact.created"}, settings={"max_executions_per_hour": 1}
    )
    conn.execute(
        "select conveyor.emit('acme', 'crm.contact.created', '{}'::jsonb) from generate_series(1, 3000)"
    )
    for _ in range(30):
        conn.execute("select conveyor.dispatch(100)")
    event = emit(conn, "acme", "crm.contact.created")
    dispatch(conn)
    conn.execute("analyze conveyor.executions, conveyor.execution_logs, conveyor.events")

    tables = ("conveyor.executions", "conveyor.execution_logs", "conveyor.step_runs")
    before = {t: table_counters(conn, t)["read"] for t in tables}
    shown = explain(conn, event)
    rows = listed(conn)
    read = {t: table_counters(conn, t)["read"] - before[t] for t in before}
    assert shown["outcome"] == "started 1; rate_limit"
    assert len(rows) == 50 and all(r["outcome"] == "started 1; rate_limit" for r in rows[1:])
    # one event, then fifty: the rows of the batches they were dispatched in (the lone event's,
    # then the last hundred's), never the history
    assert read["conveyor.executions"] <= 2 * (1 + 100 + 1) and read["conveyor.execution_logs"] <= 2 * (
        1 + 100 + 1
    ), read
    # the tenant waits for nothing: no step run is looked at for the waits these resumed
    assert read["conveyor.step_runs"] == 0, read
