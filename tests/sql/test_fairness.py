"""Fair sharing between tenants: dispatch (conveyor.claim_events) and the runners' read
(conveyor.read_actions) give every tenant with work waiting its share of a batch, in its
own order, whatever another tenant has queued (docs/queue.md, "Fairness")."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from tests.sql.dispatch_helpers import add_tenant, emit, publish

Conn = psycopg.Connection[dict[str, Any]]


def pending_events(conn: Conn, counts: dict[str, int]) -> dict[str, list[int]]:
    """`counts[t]` pending events of each tenant, interleaved in no tenant's favour: the
    first tenant's all come first (its burst), then the others'."""
    ids: dict[str, list[int]] = {}
    for tenant, n in counts.items():
        add_tenant(conn, tenant)
        rows = conn.execute(
            "insert into conveyor.events (tenant_id, event_type, source, payload)"
            " select %s, 'fair.item.created', 'api', '{}' from generate_series(1, %s)"
            " returning event_id",
            (tenant, n),
        ).fetchall()
        ids[tenant] = [r["event_id"] for r in rows]
    return ids


def claim(conn: Conn, limit: int) -> list[dict[str, Any]]:
    return conn.execute("select * from conveyor.claim_events(%s)", (limit,)).fetchall()


def queued_actions(conn: Conn, counts: dict[str, int]) -> dict[str, list[int]]:
    """`counts[t]` visible messages of each tenant in the action queue, each tenant's together."""
    ids: dict[str, list[int]] = {}
    for tenant, n in counts.items():
        rows = conn.execute(
            "insert into pgmq.q_conveyor_actions (vt, message)"
            " select now() - interval '1 second', jsonb_build_object('tenant_id', %s::text, 'step_run_id', g)"
            " from generate_series(1, %s) as g returning msg_id",
            (tenant, n),
        ).fetchall()
        ids[tenant] = [r["msg_id"] for r in rows]
    return ids


def read(conn: Conn, qty: int) -> list[dict[str, Any]]:
    return conn.execute(
        "select msg_id, message ->> 'tenant_id' as tenant from conveyor.read_actions(%s, 0, 30)", (qty,)
    ).fetchall()


def test_one_tenants_burst_leaves_room_for_another_tenants_event_in_a_short_first_batch(conn: Conn) -> None:
    ids = pending_events(conn, {"noisy": 5000, "quiet": 1})
    with conn.transaction():
        claimed = claim(conn, 100)
    tenants = [r["tenant_id"] for r in claimed]
    # the quiet tenant's event rides in a quarter batch: its transaction is short
    assert len(claimed) == 25
    assert tenants.count("quiet") == 1
    # the noisy tenant fills the rest with its oldest events, in order
    assert [r["event_id"] for r in claimed if r["tenant_id"] == "noisy"] == ids["noisy"][:24]
    # the quiet one dispatched, the burst alone has the whole batch again
    conn.execute(
        "update conveyor.events set dispatched_at = now() where event_id = any(%s)",
        ([r["event_id"] for r in claimed],),
    )
    with conn.transaction():
        assert [r["event_id"] for r in claim(conn, 100)] == ids["noisy"][24:124]


def test_busy_tenants_alone_share_the_whole_batch(conn: Conn) -> None:
    pending_events(conn, {"a": 500, "b": 500})
    with conn.transaction():
        claimed = claim(conn, 200)
    assert len(claimed) == 200
    assert sum(1 for r in claimed if r["tenant_id"] == "a") == 100


def test_the_first_dispatch_starts_the_quiet_tenants_workflow_behind_a_burst(conn: Conn) -> None:
    for tenant in ("noisy", "quiet"):
        add_tenant(conn, tenant)
        publish(conn, tenant, "greet", {"event": "crm.contact.created"})
    for _ in range(300):
        emit(conn, "noisy", "crm.contact.created")
    quiet_event = emit(conn, "quiet", "crm.contact.created")
    assert conn.execute("select conveyor.dispatch(60) as n").fetchone() == {"n": 15}
    started = conn.execute(
        "select tenant_id, count(*) as n from conveyor.executions group by 1 order by 1"
    ).fetchall()
    assert started == [{"tenant_id": "noisy", "n": 14}, {"tenant_id": "quiet", "n": 1}]
    assert conn.execute(
        "select dispatched_at is not null as done from conveyor.events where event_id = %s", (quiet_event,)
    ).fetchone() == {"done": True}


def test_equal_shares_and_what_one_tenant_leaves_goes_to_the_others(conn: Conn) -> None:
    pending_events(conn, {"a": 40, "b": 40, "c": 3})
    with conn.transaction():
        claimed = claim(conn, 30)
    per: dict[str, int] = defaultdict(int)
    for r in claimed:
        per[r["tenant_id"]] += 1
    # c takes its 3 of its share of 10; a and b share the 27 places left
    assert dict(per) == {"a": 14, "b": 13, "c": 3} or dict(per) == {"a": 13, "b": 14, "c": 3}


def test_more_tenants_than_places_serves_those_waiting_longest(conn: Conn) -> None:
    ids = pending_events(conn, {f"t{i:02d}": 2 for i in range(10)})
    with conn.transaction():
        claimed = claim(conn, 4)
    # each tenant's events came together, t00's first: the four whose oldest is oldest
    assert sorted(r["event_id"] for r in claimed) == [ids[f"t0{i}"][0] for i in range(4)]


def test_concurrent_dispatchers_claim_disjoint_events_fairly(db_url: str, conn: Conn) -> None:
    pending_events(conn, {"noisy": 2000, "quiet": 20})
    barrier = threading.Barrier(2)
    results: list[list[dict[str, Any]]] = [[], []]

    def worker(i: int) -> None:
        with psycopg.connect(db_url, row_factory=dict_row) as c:
            barrier.wait()
            results[i] = c.execute("select * from conveyor.claim_events(200)").fetchall()
            barrier.wait()  # both hold their claims until both have claimed
            c.rollback()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    a, b = ({r["event_id"] for r in res} for res in results)
    assert not a & b
    # each carries quiet events (or found them locked), so each is a quarter batch
    assert len(a) + len(b) == 100
    assert sum(1 for res in results for r in res if r["tenant_id"] == "quiet") == 20


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    counts=st.dictionaries(st.sampled_from(["a", "b", "c", "d", "e"]), st.integers(1, 60), min_size=1),
    limit=st.integers(1, 120),
)
def test_a_claim_is_each_tenants_oldest_events_never_more_than_the_batch(
    conn: Conn, counts: dict[str, int], limit: int
) -> None:
    conn.execute("delete from conveyor.events")
    ids = pending_events(conn, counts)
    with conn.transaction():
        claimed = claim(conn, limit)
    got: dict[str, list[int]] = defaultdict(list)
    for r in claimed:
        got[r["tenant_id"]].append(r["event_id"])
    assert len(claimed) <= limit
    for tenant, events in got.items():
        # a prefix of the tenant's pending events: its order is kept
        assert sorted(events) == ids[tenant][: len(events)]
    total = sum(counts.values())
    tenants = len(counts)
    # the first round's places: the whole batch for one tenant, else a quarter (a place each)
    first = limit if tenants == 1 else max(min(tenants, limit), limit // 4)
    if len(claimed) < min(limit, total):
        # a short batch carries a tenant served completely (a quiet one: the batch stops at
        # the quarter), or is the rounding of more than two tenants' shares
        assert tenants > 2 or any(len(got[t]) == n for t, n in counts.items()), (counts, limit, dict(got))
        assert tenants > 2 or len(claimed) >= min(first, total), (counts, limit, dict(got))
    # a tenant gets at least its equal share of the first round (or all it has)
    if limit >= tenants:
        share = first // tenants
        for tenant, n in counts.items():
            assert len(got[tenant]) >= min(share, n), (counts, limit, dict(got))


def test_the_runners_read_takes_another_tenants_single_action_in_the_first_batch(conn: Conn) -> None:
    queued_actions(conn, {"noisy": 50_000})
    [quiet] = queued_actions(conn, {"quiet": 1})["quiet"]
    batch = read(conn, 16)
    assert len(batch) == 16
    assert [r["msg_id"] for r in batch if r["tenant"] == "quiet"] == [quiet]


def test_the_read_keeps_each_tenants_order_and_fills_the_batch(conn: Conn) -> None:
    ids = queued_actions(conn, {"a": 30, "b": 2})
    batch = read(conn, 10)
    got: dict[str, list[int]] = defaultdict(list)
    for r in batch:
        got[r["tenant"]].append(r["msg_id"])
    assert sorted(got["b"]) == ids["b"]
    assert sorted(got["a"]) == ids["a"][:8]
    # the next read goes on where each tenant's last one ended; messages in flight are skipped
    again = read(conn, 5)
    assert sorted(r["msg_id"] for r in again) == ids["a"][8:13]


def test_a_message_without_a_tenant_is_still_read(conn: Conn) -> None:
    conn.execute(
        "insert into pgmq.q_conveyor_actions (vt, message) values (now(), %s)", (Jsonb({"step_run_id": 1}),)
    )
    queued_actions(conn, {"a": 3})
    assert len(read(conn, 10)) == 4
