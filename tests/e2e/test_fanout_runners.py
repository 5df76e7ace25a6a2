"""Fan-out with real runners: a for_each whose runner is SIGKILLed while its items complete,
and two runners finishing a parallel's branches at the same time.

What the engine guarantees to a receiver (docs/queue.md): an action whose result never
came back is delivered again with the same idempotency key, so a side effect is at least
once per key, and its step completes exactly once. The tests assert that, per item."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import defaultdict
from typing import Any

import pytest
from psycopg.types.json import Jsonb

from tests.e2e.helpers import Conn, setup_tenant
from tests.runner.helpers import Received, Reply, local_http, wait_for

pytestmark = pytest.mark.slow

ITEMS = 40


def publish(conn: Conn, tenant: str, document: dict[str, Any]) -> None:
    conn.execute("select conveyor.publish(%s, %s)", (tenant, Jsonb(document)))


def emit(conn: Conn, tenant: str, event_type: str, payload: dict[str, Any]) -> None:
    conn.execute("select conveyor.emit(%s, %s, %s)", (tenant, event_type, Jsonb(payload)))


def parents(conn: Conn) -> list[dict[str, Any]]:
    return conn.execute(
        "select * from conveyor.executions where parent_execution_id is null order by execution_id"
    ).fetchall()


def finished(conn: Conn, count: int) -> list[dict[str, Any]] | None:
    rows = parents(conn)
    if len(rows) == count and all(r["status"] in ("completed", "failed", "cancelled") for r in rows):
        return rows
    return None


def hook(step_id: str, url: str, body: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "action": "webhook.send", "with": {"url": url, "body": body}} | extra


def test_a_runner_sigkilled_while_items_complete_loses_no_item_and_the_parent_completes_once(
    conn: Conn, runners: Any
) -> None:
    tenant = setup_tenant(conn)
    with local_http() as server:
        lock = threading.Lock()
        by_key: dict[str, list[int]] = defaultdict(list)

        def item(received: Received) -> Reply:
            with lock:
                by_key[received.headers["idempotency-key"]].append(json.loads(received.body)["item"])
            return Reply(status=200, body={"item": json.loads(received.body)["item"]}, delay_s=0.3)

        server.routes["/item"] = item
        publish(
            conn,
            tenant,
            {
                "slug": "fan",
                "name": "fan",
                "trigger": {"event": "shop.batch.created"},
                "steps": [
                    {
                        "id": "each",
                        "for_each": {
                            "items": "{{trigger.payload.ids}}",
                            "concurrency": 5,
                            "steps": [
                                # a short timeout: a message the killed runner held is visible again soon
                                hook("push", server.url("/item"), {"item": "{{item}}"}, timeout="2s"),
                            ],
                        },
                    },
                    {"id": "after", "set": {"done": "{{steps.each.output.completed}}"}},
                ],
            },
        )
        emit(conn, tenant, "shop.batch.created", {"ids": list(range(ITEMS))})
        settings = {
            "CONVEYOR_VISIBILITY_MARGIN": "1",
            "CONVEYOR_CONCURRENCY": "5",
            "CONVEYOR_BATCH_SIZE": "5",
        }
        victim = runners(**settings)
        # killed with items done, in flight and not yet started
        wait_for(lambda: len(server.requests_to("/item")) >= 12, timeout=60)
        victim.proc.kill()
        assert victim.proc.wait(timeout=10) == -signal.SIGKILL
        in_flight_at_kill = conn.execute(
            "select count(*) as n from conveyor.step_runs where status = 'queued'"
        ).fetchone()
        survivor = runners(**settings)
        [parent] = wait_for(lambda: finished(conn, 1), timeout=120)
        assert parent["status"] == "completed", parent["error"]

        # every item delivered, each under one key of its own, repeated only for redeliveries
        with lock:
            deliveries = dict(by_key)
        assert len(deliveries) == ITEMS
        assert sorted(items[0] for items in deliveries.values()) == list(range(ITEMS))
        assert all(len(set(items)) == 1 for items in deliveries.values())
        repeated = sum(len(items) - 1 for items in deliveries.values())
        assert in_flight_at_kill is not None and repeated <= in_flight_at_kill["n"] <= 5

        # each child's step completed exactly once, under the key the receiver saw
        runs = conn.execute(
            "select r.idempotency_key, r.status, c.child_index from conveyor.step_runs as r"
            " join conveyor.executions as c using (execution_id)"
            " where c.parent_execution_id = %s and r.step_id = 'push' order by c.child_index",
            (parent["execution_id"],),
        ).fetchall()
        assert [r["child_index"] for r in runs] == list(range(ITEMS))
        assert all(r["status"] == "completed" for r in runs)
        assert {r["idempotency_key"] for r in runs} == set(deliveries)

        # the output lists every item, in order, with its own response; the next step ran once
        output = parent["step_outputs"]["each"]["output"]
        assert (output["count"], output["completed"], output["failed"]) == (ITEMS, ITEMS, 0)
        assert [i["index"] for i in output["items"]] == list(range(ITEMS))
        assert [i["output"]["body"]["item"] for i in output["items"]] == list(range(ITEMS))
        assert parent["vars"] == {"done": ITEMS}
        after = conn.execute(
            "select count(*) as n from conveyor.step_runs where execution_id = %s and step_id = 'after'",
            (parent["execution_id"],),
        ).fetchone()
        assert after == {"n": 1}
        wait_for(
            lambda: conn.execute("select count(*) as n from pgmq.q_conveyor_actions").fetchone() == {"n": 0},
            timeout=20,
        )
        wait_for(survivor.ready, timeout=30)
        assert survivor.stop() == 0


def test_two_runners_finishing_branches_at_once_run_the_next_step_exactly_once(
    conn: Conn, runners: Any
) -> None:
    tenant = setup_tenant(conn)
    parents_count, branches = 8, 4
    with local_http() as server:
        server.routes["/branch"] = Reply(status=200, delay_s=0.2)
        server.routes["/after"] = Reply(status=200)
        publish(
            conn,
            tenant,
            {
                "slug": "par",
                "name": "par",
                "trigger": {"event": "shop.order.created"},
                "steps": [
                    {
                        "id": "fan",
                        "parallel": {
                            "branches": {
                                f"b{b}": [
                                    hook(
                                        f"call{b}", server.url("/branch"), {"order": "{{trigger.payload.n}}"}
                                    )
                                ]
                                for b in range(branches)
                            }
                        },
                    },
                    hook("after", server.url("/after"), {"order": "{{trigger.payload.n}}"}),
                ],
            },
        )
        # both runners ready before the orders arrive, and every branch answers after the
        # same delay: branches of one parent finish together, on both runners
        settings = {"CONVEYOR_BATCH_SIZE": "4", "CONVEYOR_CONCURRENCY": "4"}
        first, second = runners(**settings), runners(**settings)
        wait_for(lambda: first.ready() and second.ready(), timeout=30)
        for n in range(parents_count):
            emit(conn, tenant, "shop.order.created", {"n": n})
        rows = wait_for(lambda: finished(conn, parents_count), timeout=90)
        assert [r["status"] for r in rows] == ["completed"] * parents_count, [r["error"] for r in rows]
        time.sleep(0.5)  # a second run of `after` would have been queued by now
        orders = sorted(json.loads(r.body)["order"] for r in server.requests_to("/after"))
        assert orders == list(range(parents_count))
        assert len(server.requests_to("/branch")) == parents_count * branches
        counts = conn.execute(
            "select execution_id, count(*) as n from conveyor.step_runs where step_id = 'after'"
            " group by execution_id order by execution_id"
        ).fetchall()
        assert [c["n"] for c in counts] == [1] * parents_count
        joins = conn.execute(
            "select succeeded, failed, open, state from conveyor.fanouts order by fanout_id"
        ).fetchall()
        assert joins == [{"succeeded": branches, "failed": 0, "open": 0, "state": "joined"}] * parents_count
        for output in (r["step_outputs"]["fan"]["output"] for r in rows):
            assert sorted(output["branches"]) == [f"b{b}" for b in range(branches)]
        done = [sum(1 for line in r.lines() if line["msg"] == "action succeeded") for r in (first, second)]
        assert sum(done) == parents_count * (branches + 1)
        assert all(d > 0 for d in done), done  # both runners took part
        assert first.stop() == 0 and second.stop() == 0
