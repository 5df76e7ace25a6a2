"""Replaying an event (sql/event_replay.sql): conveyor.replay_event, for the tenant's own events only."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.sql.dispatch_helpers import add_tenant, emit, publish
from tests.sql.tenant_context import acting_for

Conn = psycopg.Connection[dict[str, Any]]


def replay(conn: Conn, tenant_id: str, event_id: int) -> int:
    row = conn.execute("select conveyor.replay_event(%s, %s) as id", (tenant_id, event_id)).fetchone()
    assert row is not None
    return int(row["id"])


def event(conn: Conn, event_id: int) -> dict[str, Any]:
    row = conn.execute(
        "select tenant_id, event_type, payload, entity_type, entity_id, source, dedupe_key"
        " from conveyor.events where event_id = %s",
        (event_id,),
    ).fetchone()
    assert row is not None
    return dict(row)


def seeded_event(conn: Conn, tenant_id: str) -> int:
    """The one event the two_tenants fixture (tests/sql/tenant_seeds.py's SEEDS) seeds for the tenant."""
    row = conn.execute("select event_id from conveyor.events where tenant_id = %s", (tenant_id,)).fetchone()
    assert row is not None
    return int(row["event_id"])


def events_of(conn: Conn, tenant_id: str) -> int:
    row = conn.execute(
        "select count(*) as n from conveyor.events where tenant_id = %s", (tenant_id,)
    ).fetchone()
    assert row is not None
    return int(row["n"])


def test_a_replay_emits_a_copy_that_runs_the_workflows_again(conn: Conn) -> None:
    add_tenant(conn, "acme")
    publish(conn, "acme", "greet", {"event": "crm.contact.created"})
    original = emit(
        conn,
        "acme",
        "crm.contact.created",
        {"name": "Ada"},
        entity_type="contact",
        entity_id="42",
        source="crm",
    )
    copy = replay(conn, "acme", original)
    conn.execute("select conveyor.dispatch()")

    assert copy != original
    assert event(conn, copy) == {**event(conn, original), "dedupe_key": None}
    started = conn.execute("select event_id from conveyor.executions order by event_id").fetchall()
    assert [r["event_id"] for r in started] == [original, copy]


def test_another_tenant_cannot_replay_an_event(conn: Conn) -> None:
    add_tenant(conn, "acme")
    add_tenant(conn, "globex")
    theirs = emit(conn, "acme", "crm.contact.created", {"secret": "of-acme"})

    with pytest.raises(
        psycopg.errors.InvalidParameterValue, match=f'event {theirs} does not exist for tenant "globex"'
    ):
        replay(conn, "globex", theirs)
    assert events_of(conn, "globex") == 0 and events_of(conn, "acme") == 1


def test_the_application_role_replays_only_its_tenants_events(
    app: Conn, two_tenants: Conn, acme: str
) -> None:
    ours, theirs = (seeded_event(two_tenants, t) for t in ("acme", "globex"))
    with acting_for(app, acme):
        copy = replay(app, "acme", ours)
    assert event(two_tenants, copy)["payload"] == {"secret": "of-acme"}
    # globex's event, asked for as acme's (the session's tenant) or as globex's: refused,
    # and nothing of globex's was read or emitted
    with (
        acting_for(app, acme),
        pytest.raises(psycopg.errors.InvalidParameterValue, match='does not exist for tenant "acme"'),
    ):
        replay(app, "acme", theirs)
    with (
        acting_for(app, acme),
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="not this session's tenant"),
    ):
        replay(app, "globex", theirs)
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="no tenant is set for this session"):
        replay(app, "globex", theirs)
    assert events_of(two_tenants, "globex") == 1
