"""wait_until: a wait on a platform row's state ("until the invoice is paid"), resumed at once
when the row already satisfies the condition, else by the captured change that makes it true
(sql/waits.sql)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from bench.wait_races import dispatch, settle, settle_without_timeouts, tick
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

Conn = psycopg.Connection[dict[str, Any]]


def paid_workflow(
    steps_before: list[dict[str, Any]] | None = None, trigger: str = "billing.invoice.created"
) -> dict[str, Any]:
    return {
        "slug": "dunning",
        "name": "Dunning",
        "trigger": {"event": trigger},
        "steps": [
            *(steps_before or []),
            {
                "id": "paid",
                "wait_until": {
                    "entity": "invoice",
                    "id": "{{trigger.entity_id}}",
                    "condition": {"field": "row.status", "op": "equals", "value": "paid"},
                    "timeout": "1h",
                },
                "on_met": "thank",
                "on_timeout": "remind",
            },
            {"id": "thank", "set": {"r": "paid", "amount": "{{steps.paid.output.row.amount}}"}, "next": None},
            {"id": "remind", "set": {"r": "timeout"}},
        ],
    }


@pytest.fixture
def invoices(conn: Conn) -> None:
    for tenant in ("acme", "other"):
        conn.execute("select conveyor.create_tenant(%s, %s)", (tenant, tenant.title()))
    conn.execute(
        """create table public.invoices (
             tenant_id text not null, id text not null, status text not null, amount integer,
             primary key (tenant_id, id))"""
    )
    conn.execute("insert into conveyor.entities values ('invoice', 'public.invoices', 'id', 'tenant_id')")
    conn.execute("select conveyor.watch('public.invoices', 'billing', 'invoice')")


def publish(conn: Conn, doc: dict[str, Any]) -> None:
    conn.execute("select conveyor.publish('acme', %s)", (Jsonb(doc),))


def outcome(conn: Conn) -> dict[str, Any]:
    row = conn.execute("""
        select x.status, x.vars,
          (select count(*) from conveyor.step_runs as r
            where r.execution_id = x.execution_id and r.step_id = 'paid' and r.status = 'completed') as waits_done
        from conveyor.executions as x
        """).fetchone()
    assert row is not None
    return row


def invoice(conn: Conn, status: str, amount: int = 100, tenant: str = "acme") -> None:
    conn.execute("insert into public.invoices values (%s, 'inv1', %s, %s)", (tenant, status, amount))


def set_status(conn: Conn, status: str, tenant: str = "acme") -> None:
    conn.execute(
        "update public.invoices set status = %s where tenant_id = %s and id = 'inv1'", (status, tenant)
    )


def test_satisfied_when_the_wait_begins(conn: Conn, invoices: None) -> None:
    publish(conn, paid_workflow())
    invoice(conn, "paid", 70)
    settle(conn)
    assert outcome(conn) == {"status": "completed", "vars": {"r": "paid", "amount": 70}, "waits_done": 1}


def test_satisfied_later_by_a_captured_change(conn: Conn, invoices: None) -> None:
    publish(conn, paid_workflow())
    invoice(conn, "open")
    settle_without_timeouts(conn)
    assert outcome(conn)["status"] == "waiting"
    conn.execute("update public.invoices set amount = 120")  # a change that does not make it true
    settle_without_timeouts(conn)
    assert outcome(conn)["status"] == "waiting"
    set_status(conn, "paid")
    assert dispatch(conn) == 1
    assert outcome(conn) == {"status": "completed", "vars": {"r": "paid", "amount": 120}, "waits_done": 1}


def test_another_tenants_row_does_not_count(conn: Conn, invoices: None) -> None:
    publish(conn, paid_workflow())
    invoice(conn, "open")
    invoice(conn, "paid", tenant="other")
    settle_without_timeouts(conn)
    set_status(conn, "paid", tenant="other")
    conn.execute("update public.invoices set amount = 5 where tenant_id = 'other'")
    settle(conn)
    assert outcome(conn)["vars"] == {"r": "timeout"}


@pytest.mark.parametrize("dispatched_before_the_wait", [True, False])
def test_satisfied_and_unsatisfied_before_the_wait_begins(
    conn: Conn, invoices: None, dispatched_before_the_wait: bool
) -> None:
    # trigger -> 1 s delay -> wait_until; the invoice is paid and unpaid again during the delay
    publish(conn, paid_workflow(steps_before=[{"id": "pause", "delay": {"for": "1s"}}]))
    invoice(conn, "open")
    settle_without_timeouts(conn)
    set_status(conn, "paid")
    set_status(conn, "open")
    if dispatched_before_the_wait:
        settle_without_timeouts(conn)
    tick(conn, "now() + interval '2 seconds'")  # the wait begins: the row is open
    assert outcome(conn)["status"] == "waiting"
    settle(conn)
    assert outcome(conn)["vars"] == {"r": "timeout"}


def test_a_change_dispatched_while_the_wait_is_uncommitted_is_not_lost(
    db_url: str, conn: Conn, invoices: None
) -> None:
    # (triggered by an emitted event: the dispatch of a captured one would hold the table's
    # ingest until it commits)
    publish(conn, paid_workflow(trigger="billing.invoice.sent"))
    invoice(conn, "open")
    settle_without_timeouts(conn)
    conn.execute("select conveyor.emit('acme', 'billing.invoice.sent', '{}', 'invoice', 'inv1')")
    with psycopg.connect(db_url, row_factory=dict_row) as registering:
        assert dispatch(registering) == 1  # the wait began; not committed
        set_status(conn, "paid")
        assert dispatch(conn) == 1  # cannot see the wait
        registering.commit()
    assert outcome(conn)["status"] == "waiting"
    assert tick(conn) == 1  # the confirmation reads the row again
    assert outcome(conn)["vars"] == {"r": "paid", "amount": 100}


def test_wait_until_is_validated(conn: Conn, invoices: None) -> None:
    doc = paid_workflow()
    doc["steps"][0]["wait_until"] |= {
        "entity": "payment",
        "condition": {"field": "record.status", "op": "equals", "value": "paid"},
    }
    del doc["steps"][0]["wait_until"]["timeout"]
    problems = [
        r["p"] for r in conn.execute("select conveyor.validate_workflow(%s) as p", (Jsonb(doc),)).fetchall()
    ]
    assert problems == [
        "steps[0].wait_until.timeout: required key is missing",
        'steps[0].wait_until.entity: "payment" is not a registered entity (see conveyor.entities)',
        'steps[0].wait_until.condition.field: unknown root "record" (expected one of trigger, steps, vars,'
        " execution, tenant, now, row)",
    ]
