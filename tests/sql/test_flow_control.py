"""Flow control of a workflow's executions (sql/flow_control.sql, docs/flow-control.md):
concurrency per key, debounce and throttle, through real dispatch and the tick."""

from __future__ import annotations

import random
import threading
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from tests.sql.dispatch_helpers import add_tenant, emit, log_reasons, publish

Conn = psycopg.Connection[dict[str, Any]]

# Holds its slot until a correlated "done" event arrives after its wait began.
HOLD = [
    {
        "id": "hold",
        "wait_for_event": {
            "event": "crm.deal.done",
            "match": {"entity_id": "{{trigger.entity_id}}"},
            "since": "wait",
            "timeout": "3d",
        },
        "on_event": "after",
        "on_timeout": None,
    },
    {"id": "after", "set": {"done": True}},
]


def publish_limited(conn: Conn, tenant: str, limit: int = 1, **settings: Any) -> int:
    return publish(
        conn,
        tenant,
        "per-deal",
        {"event": "crm.deal.updated"},
        steps=HOLD,
        settings={"concurrency": {"key": "{{trigger.entity_id}}", "limit": limit}, **settings},
    )


def updated(conn: Conn, tenant: str, deal: str, n: int = 1) -> list[int]:
    return [
        emit(conn, tenant, "crm.deal.updated", {"n": i}, entity_type="deal", entity_id=deal) for i in range(n)
    ]


def dispatch(conn: Conn) -> None:
    while conn.execute("select conveyor.dispatch() as n").fetchone()["n"]:  # type: ignore[index]
        pass


def done(conn: Conn, tenant: str, deal: str) -> None:
    emit(conn, tenant, "crm.deal.done", entity_type="deal", entity_id=deal)
    dispatch(conn)


def tick(conn: Conn, at: datetime | None = None) -> int:
    at = at or conn.execute("select now() + interval '1 second' as t").fetchone()["t"]  # type: ignore[index]
    return int(conn.execute("select conveyor.resume_due(%s) as n", (at,)).fetchone()["n"])  # type: ignore[index]


def states(conn: Conn, deal: str) -> list[tuple[int, str, str | None]]:
    """(event's n, status, wait_kind) of the deal's executions, in order."""
    rows = conn.execute(
        "select (trigger -> 'payload' ->> 'n')::int as n, status, wait_kind from conveyor.executions"
        " where entity_id = %s and workflow_id is not null order by execution_id",
        (deal,),
    ).fetchall()
    return [(r["n"], r["status"], r["wait_kind"]) for r in rows]


def slots(conn: Conn) -> dict[str, int]:
    rows = conn.execute("select key, running from conveyor.flow_slots order by key").fetchall()
    return {r["key"]: r["running"] for r in rows}


def test_one_execution_per_key_runs_the_rest_wait_in_order(conn: Conn) -> None:
    t = add_tenant(conn, "acme")
    publish_limited(conn, t)
    updated(conn, t, "d1", 3)
    updated(conn, t, "d2")
    dispatch(conn)
    assert states(conn, "d1") == [(0, "waiting", "event"), (1, "waiting", "slot"), (2, "waiting", "slot")]
    assert states(conn, "d2") == [(0, "waiting", "event")]
    assert slots(conn) == {"d1": 1, "d2": 1}

    done(conn, t, "d1")
    # the slot passed to the next in order; it runs at the tick
    assert states(conn, "d1")[:2] == [(0, "completed", None), (1, "waiting", "slot")]
    assert tick(conn) >= 1
    assert states(conn, "d1") == [(0, "completed", None), (1, "waiting", "event"), (2, "waiting", "slot")]
    assert slots(conn) == {"d1": 1, "d2": 1}

    done(conn, t, "d1")
    tick(conn)
    done(conn, t, "d1")
    assert [s for _, s, _ in states(conn, "d1")] == ["completed"] * 3
    # a key with nothing running or queued keeps no row
    assert slots(conn) == {"d2": 1}


def test_a_limit_of_two_admits_two_per_key(conn: Conn) -> None:
    t = add_tenant(conn, "acme")
    publish_limited(conn, t, limit=2)
    updated(conn, t, "d1", 5)
    dispatch(conn)
    assert [w for _, _, w in states(conn, "d1")] == ["event", "event", "slot", "slot", "slot"]


def test_a_new_event_queues_behind_those_already_waiting(conn: Conn) -> None:
    t = add_tenant(conn, "acme")
    publish_limited(conn, t)
    updated(conn, t, "d1", 2)
    dispatch(conn)
    updated(conn, t, "d1")
    dispatch(conn)
    assert states(conn, "d1") == [(0, "waiting", "event"), (1, "waiting", "slot"), (0, "waiting", "slot")]


def test_cancelling_a_queued_execution_frees_nothing_and_a_running_one_frees_its_slot(conn: Conn) -> None:
    t = add_tenant(conn, "acme")
    publish_limited(conn, t)
    updated(conn, t, "d1", 3)
    dispatch(conn)
    ids = [
        r["execution_id"]
        for r in conn.execute("select execution_id from conveyor.executions order by execution_id").fetchall()
    ]
    conn.execute("select conveyor.cancel_execution(%s, %s, 'not needed')", (t, ids[2]))
    assert slots(conn) == {"d1": 1}
    assert states(conn, "d1")[1] == (1, "waiting", "slot")
    conn.execute("select conveyor.cancel_execution(%s, %s, 'stop')", (t, ids[0]))
    tick(conn)
    assert states(conn, "d1") == [(0, "cancelled", None), (1, "waiting", "event"), (2, "cancelled", None)]
    assert slots(conn) == {"d1": 1}


def test_a_failing_execution_frees_its_slot(conn: Conn) -> None:
    t = add_tenant(conn, "acme")
    publish(
        conn,
        t,
        "fails",
        {"event": "crm.deal.updated"},
        steps=[
            {"id": "boom", "transform": {"op": "render", "template": "{{trigger.payload.missing.deeper}}"}}
        ],
        settings={"concurrency": {"key": "{{trigger.entity_id}}", "limit": 1}},
    )
    updated(conn, t, "d1", 2)
    dispatch(conn)
    tick(conn)
    rows = conn.execute("select status from conveyor.executions order by execution_id").fetchall()
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert slots(conn) == {}


def test_a_manual_run_and_a_retry_wait_for_their_keys_slot_too(conn: Conn) -> None:
    t = add_tenant(conn, "acme")
    publish_limited(conn, t)
    updated(conn, t, "d1")
    dispatch(conn)
    manual = conn.execute(
        "select conveyor.trigger_workflow(%s, 'per-deal', '{\"n\": 7}', 'deal', 'd1') as id", (t,)
    ).fetchone()["id"]  # type: ignore[index]
    assert states(conn, "d1") == [(0, "waiting", "event"), (7, "waiting", "slot")]
    assert slots(conn) == {"d1": 1}
    # the running one done, the manual run has the slot and runs
    done(conn, t, "d1")
    tick(conn)
    assert states(conn, "d1") == [(0, "completed", None), (7, "waiting", "event")]

    # a retry of a cancelled one queues behind the manual run that holds the slot
    conn.execute("select conveyor.cancel_execution(%s, %s, 'stop')", (t, manual))
    updated(conn, t, "d1")
    dispatch(conn)
    retry = conn.execute("select conveyor.retry_execution(%s, %s) as id", (t, manual)).fetchone()["id"]  # type: ignore[index]
    assert conn.execute(
        "select status, wait_kind, flow_key from conveyor.executions where execution_id = %s", (retry,)
    ).fetchone() == {"status": "waiting", "wait_kind": "slot", "flow_key": "d1"}
    assert slots(conn) == {"d1": 1}
    # another key's manual run runs at once
    conn.execute("select conveyor.trigger_workflow(%s, 'per-deal', '{}', 'deal', 'd2')", (t,))
    assert slots(conn) == {"d1": 1, "d2": 1}


@pytest.mark.parametrize("seed", range(6))
def test_racing_dispatchers_never_admit_more_than_the_limit(db_url: str, conn: Conn, seed: int) -> None:
    rng = random.Random(seed)
    t = add_tenant(conn, "acme")
    limit = rng.randint(1, 3)
    publish_limited(conn, t, limit=limit)
    deals = [f"d{i}" for i in range(rng.randint(1, 4))]
    for _ in range(rng.randint(10, 40)):
        updated(conn, t, rng.choice(deals))
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def dispatcher() -> None:
        try:
            with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as c:
                barrier.wait()
                while c.execute("select conveyor.dispatch(3) as n").fetchone()["n"]:  # type: ignore[index]
                    pass
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=dispatcher) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors
    for deal in deals:
        holding = [s for s in states(conn, deal) if s[2] != "slot"]
        assert len(holding) <= limit, (deal, states(conn, deal))
        queued = [s for s in states(conn, deal) if s[2] == "slot"]
        total = len(states(conn, deal))
        assert len(holding) == min(limit, total) and len(queued) == total - len(holding)
    assert slots(conn) == {d: min(limit, len(states(conn, d))) for d in deals if states(conn, d)}


def test_debounce_starts_one_execution_with_the_last_event_of_a_burst(conn: Conn) -> None:
    t = add_tenant(conn, "acme")
    publish(
        conn,
        t,
        "sync",
        {"event": "crm.deal.updated"},
        steps=[{"id": "note", "set": {"n": "{{trigger.payload.n}}"}}],
        settings={"debounce": {"key": "{{trigger.entity_id}}", "period": "30s"}},
    )
    events = updated(conn, t, "d1", 4)
    dispatch(conn)
    other = updated(conn, t, "d2")
    dispatch(conn)
    rows = conn.execute(
        "select entity_id, event_id, status, wait_kind, resume_at from conveyor.executions order by execution_id"
    ).fetchall()
    assert [(r["entity_id"], r["event_id"], r["wait_kind"]) for r in rows] == [
        ("d1", events[-1], "debounce"),
        ("d2", other[0], "debounce"),
    ]
    assert log_reasons(conn).count("debounce") == 3
    # nothing runs before the burst has been quiet for the period
    start = rows[0]["resume_at"] - timedelta(seconds=30)
    assert tick(conn, start + timedelta(seconds=10)) == 0
    # a later event of the burst pushes the end back by a period from it
    late = emit(conn, t, "crm.deal.updated", {"n": 9}, entity_type="deal", entity_id="d1")
    dispatch(conn)
    first = conn.execute(
        "select event_id, resume_at from conveyor.executions where entity_id = 'd1'"
    ).fetchone()
    assert first is not None and first["event_id"] == late and first["resume_at"] > rows[0]["resume_at"]
    tick(conn, first["resume_at"] - timedelta(seconds=1))
    assert states(conn, "d1") == [(9, "waiting", "debounce")]
    tick(conn, start + timedelta(minutes=5))
    rows = conn.execute(
        "select entity_id, status, vars from conveyor.executions order by execution_id"
    ).fetchall()
    assert [(r["entity_id"], r["status"], r["vars"]) for r in rows] == [
        ("d1", "completed", {"n": 9}),
        ("d2", "completed", {"n": 0}),
    ]
    assert conn.execute("select count(*) as n from conveyor.flow_debounces").fetchone() == {"n": 0}
    # the next burst starts a new execution
    updated(conn, t, "d1")
    dispatch(conn)
    assert conn.execute("select count(*) as n from conveyor.executions").fetchone() == {"n": 3}


def test_debounce_and_concurrency_together(conn: Conn) -> None:
    t = add_tenant(conn, "acme")
    publish_limited(conn, t, debounce={"key": "{{trigger.entity_id}}", "period": "10s"})
    updated(conn, t, "d1", 3)
    dispatch(conn)
    far = datetime.now().astimezone() + timedelta(minutes=1)
    tick(conn, far)
    assert [w for _, _, w in states(conn, "d1")] == ["event"]
    updated(conn, t, "d1", 2)
    dispatch(conn)
    tick(conn, far + timedelta(minutes=1))
    # the second burst's execution waits for the slot the first holds
    assert [w for _, _, w in states(conn, "d1")] == ["event", "slot"]
    done(conn, t, "d1")
    tick(conn, far + timedelta(minutes=2))
    assert [(s, w) for _, s, w in states(conn, "d1")] == [("completed", None), ("waiting", "event")]


def test_throttle_refuses_beyond_the_limit_per_key_and_period(conn: Conn) -> None:
    t = add_tenant(conn, "acme")
    publish(
        conn,
        t,
        "alert",
        {"event": "crm.deal.updated"},
        settings={"throttle": {"key": "{{trigger.entity_id}}", "limit": 2, "period": "1h"}},
    )
    updated(conn, t, "d1", 5)
    updated(conn, t, "d2")
    dispatch(conn)
    rows = conn.execute(
        "select entity_id, count(*) as n from conveyor.executions group by 1 order by 1"
    ).fetchall()
    assert [(r["entity_id"], r["n"]) for r in rows] == [("d1", 2), ("d2", 1)]
    assert log_reasons(conn).count("throttle") == 3
    line = conn.execute(
        "select message, details from conveyor.execution_logs where details ->> 'reason' = 'throttle' limit 1"
    ).fetchone()
    assert line is not None
    assert "throttled to 2 executions per 1h on key 'd1'" in line["message"]
    assert line["details"]["key"] == "d1"


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        (
            {"concurrency": {"key": "{{trigger.entity_id}}"}},
            "settings.concurrency.limit: required key is missing",
        ),
        ({"concurrency": {"key": "{{steps.a.output}}", "limit": 1}}, "settings.concurrency.key"),
        ({"concurrency": {"key": "", "limit": 1}}, "settings.concurrency.key: expected a template"),
        ({"concurrency": {"key": "x", "limit": 0}}, "settings.concurrency.limit"),
        ({"debounce": {"key": "x", "period": "soon"}}, "settings.debounce.period"),
        ({"throttle": {"key": "x", "limit": 2}}, "settings.throttle.period: required key is missing"),
        ({"throttle": "often"}, "settings.throttle: expected an object"),
        ({"debounce": {"key": "x", "period": "1m", "extra": 1}}, "settings.debounce.extra"),
    ],
)
def test_bad_flow_settings_are_refused_with_their_path(
    conn: Conn, settings: dict[str, Any], error: str
) -> None:
    add_tenant(conn, "acme")
    document = {
        "slug": "w",
        "name": "w",
        "trigger": {"event": "a.b.c"},
        "steps": [{"id": "s", "set": {"a": 1}}],
    }
    problems = [
        r["v"]
        for r in conn.execute(
            "select conveyor.validate_workflow(%s) as v", (Jsonb({**document, "settings": settings}),)
        ).fetchall()
    ]
    assert any(error in p for p in problems), problems
