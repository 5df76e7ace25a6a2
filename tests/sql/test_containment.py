"""Containment: an error in one event's or one execution's data stops nothing else.

Each poison is a real PostgreSQL error raised where a tenant's data meets the engine:
faults are injected with triggers on the engine's own tables (real statements, real
subtransactions), because the data-dependent errors known today are also being fixed at
their sources, and containment must hold for the next one too, whatever its SQLSTATE.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.sql.dispatch_helpers import add_tenant, emit, publish
from tests.sql.poison import poison_on

Conn = psycopg.Connection[dict[str, Any]]


def statuses(conn: Conn) -> dict[str, str]:
    rows = conn.execute(
        "select trigger -> 'payload' ->> 'name' as name, status from conveyor.executions"
    ).fetchall()
    return {r["name"]: r["status"] for r in rows}


def test_an_execution_that_cannot_be_run_fails_alone_and_the_batch_goes_on(conn: Conn) -> None:
    t = add_tenant(conn, "acme")
    publish(
        conn,
        t,
        "note",
        {"event": "crm.contact.created"},
        steps=[{"id": "s", "set": {"n": "{{trigger.payload.name}}"}}],
    )
    poison_on(conn, "step_runs")
    for name in ("ada", "poison", "bob"):
        emit(conn, t, "crm.contact.created", {"name": name})

    assert conn.execute("select conveyor.dispatch() as n").fetchone() == {"n": 3}

    assert statuses(conn) == {"ada": "completed", "poison": "failed", "bob": "completed"}
    error = conn.execute(
        "select error from conveyor.executions where trigger -> 'payload' ->> 'name' = 'poison'"
    ).fetchone()
    assert error is not None
    assert "could not be run: poisoned row" in error["error"]["message"]
    assert error["error"]["sqlstate"] == "22003"
    # it is counted and logged like any failed execution
    stats = conn.execute(
        "select sum(started) as s, sum(failed) as f, sum(completed) as c from conveyor.workflow_stats"
    ).fetchone()
    assert stats == {"s": 3, "f": 1, "c": 2}
    assert conn.execute(
        "select count(*) as n from conveyor.events where dispatched_at is null"
    ).fetchone() == {"n": 0}


def test_an_event_that_cannot_be_dispatched_is_logged_and_the_others_are_dispatched(conn: Conn) -> None:
    t = add_tenant(conn, "acme")
    other = add_tenant(conn, "globex")
    publish(conn, t, "note", {"event": "crm.contact.created"})
    publish(conn, other, "note", {"event": "crm.contact.created"})
    # the execution row itself cannot be written: even the failed record of it is refused
    poison_on(conn, "executions")
    poisoned = emit(conn, t, "crm.contact.created", {"name": "poison"})
    emit(conn, t, "crm.contact.created", {"name": "ada"})
    emit(conn, other, "crm.contact.created", {"name": "bob"})
    also_poisoned = emit(conn, other, "crm.contact.created", {"name": "poison too"})

    assert conn.execute("select conveyor.dispatch() as n").fetchone() == {"n": 4}
    assert conn.execute("select conveyor.dispatch() as n").fetchone() == {"n": 0}

    assert statuses(conn) == {"ada": "completed", "bob": "completed"}
    log = conn.execute(
        "select tenant_id, level, message, details from conveyor.execution_logs where event_id = %s",
        (poisoned,),
    ).fetchone()
    assert log is not None
    assert log["tenant_id"] == "acme" and log["level"] == "error"
    assert log["details"]["reason"] == "dispatch_error" and log["details"]["sqlstate"] == "22003"
    assert "dispatching it failed: poisoned row" in log["message"]
    assert conn.execute(
        "select count(*) as n from conveyor.execution_logs where details ->> 'reason' = 'dispatch_error'"
    ).fetchone() == {"n": 2}
    assert also_poisoned > poisoned


def test_an_error_in_a_resumed_execution_fails_it_alone(conn: Conn) -> None:
    t = add_tenant(conn, "acme")
    publish(
        conn,
        t,
        "later",
        {"event": "crm.contact.created"},
        steps=[
            {"id": "wait", "delay": {"for": "1 minute"}},
            {"id": "after", "set": {"n": "{{trigger.payload.name}}"}},
        ],
    )
    for name in ("ada", "poison"):
        emit(conn, t, "crm.contact.created", {"name": name})
    conn.execute("select conveyor.dispatch()")
    assert statuses(conn) == {"ada": "waiting", "poison": "waiting"}
    poison_on(conn, "step_runs")

    conn.execute("select conveyor.resume_due(now() + interval '2 minutes')")

    assert statuses(conn) == {"ada": "completed", "poison": "failed"}


@pytest.mark.parametrize("sqlstate", ["40001", "40P01", "55P03"])
def test_a_transient_error_rolls_the_batch_back_to_be_dispatched_again(conn: Conn, sqlstate: str) -> None:
    t = add_tenant(conn, "acme")
    publish(conn, t, "note", {"event": "crm.contact.created"})
    poison_on(conn, "executions", sqlstate=sqlstate)
    emit(conn, t, "crm.contact.created", {"name": "poison"})
    emit(conn, t, "crm.contact.created", {"name": "ada"})

    with pytest.raises(psycopg.Error) as raised:
        conn.execute("select conveyor.dispatch()")
    assert raised.value.sqlstate == sqlstate
    # nothing was decided: both events wait for the next dispatch
    assert conn.execute(
        "select count(*) as n from conveyor.events where dispatched_at is null"
    ).fetchone() == {"n": 2}
    assert conn.execute("select count(*) as n from conveyor.executions").fetchone() == {"n": 0}


def test_a_bad_limit_setting_is_named(conn: Conn) -> None:
    add_tenant(conn, "acme")
    conn.execute("set conveyor.max_chain_events = 'lots'")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"conveyor\.max_chain_events = 'lots'"):
        conn.execute("select conveyor.limit_setting('max_chain_events', 1000)")
    conn.execute("reset conveyor.max_chain_events")
    assert conn.execute("select conveyor.limit_setting('max_chain_events', 1000) as v").fetchone() == {
        "v": 1000
    }


def test_the_workflow_document_is_unchanged_by_containment(conn: Conn) -> None:
    """A failing step still follows its own on_error: containment is for what is outside steps."""
    t = add_tenant(conn, "acme")
    publish(
        conn,
        t,
        "flaky",
        {"event": "crm.contact.created"},
        steps=[
            {"id": "bad", "delay": {"until": "{{trigger.payload.name}}"}, "on_error": "continue"},
            {"id": "after", "set": {"ok": True}},
        ],
    )
    emit(conn, t, "crm.contact.created", {"name": "ada"})
    conn.execute("select conveyor.dispatch()")
    row = conn.execute("select status, step_outputs from conveyor.executions").fetchone()
    assert row is not None and row["status"] == "completed"
    assert "ada" in row["step_outputs"]["bad"]["error"]["message"]


def test_several_poisons_in_one_batch_each_fail_alone_in_order(conn: Conn) -> None:
    t = add_tenant(conn, "acme")
    publish(
        conn,
        t,
        "once",
        {"event": "crm.contact.created"},
        steps=[{"id": "s", "set": {"n": "{{trigger.payload.name}}"}}],
        settings={"run_once_per_entity": True},
    )
    poison_on(conn, "step_runs")
    names = ["a", "poison-1", "b", "c", "poison-2", "d", "e", "poison-3", "f"]
    for name in names:
        emit(conn, t, "crm.contact.created", {"name": name}, entity_type="contact", entity_id=name)
    # a second event for entity "b" later in the batch: run once per entity still holds
    emit(conn, t, "crm.contact.created", {"name": "b-again"}, entity_type="contact", entity_id="b")

    conn.execute("select conveyor.dispatch()")

    expected = {n: ("failed" if n.startswith("poison") else "completed") for n in names}
    assert statuses(conn) == expected
    assert [
        r
        for r in conn.execute("select details ->> 'reason' as r from conveyor.execution_logs")
        if r["r"] == "run_once"
    ]
