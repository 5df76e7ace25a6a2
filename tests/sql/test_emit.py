"""conveyor.emit: an event from the platform's own code, deduplicated, checked, and waking runners."""

from __future__ import annotations

import psycopg
import pytest

from tests.sql.capture_helpers import events

Conn = psycopg.Connection[dict[str, object]]


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
