"""Dispatch + interpretation throughput, and matching cost with many unrelated subscriptions.

    .venv/bin/python -m bench.dispatch_throughput [--events 10000]

1. Executions per second for a workflow of three internal steps (condition, set, transform),
   from committed events to completed executions (target: >= 5,000/s on 2 cores).
2. Cost per event with 10,000 subscriptions on other event types vs 10 (target <= 1.2x).
"""

from __future__ import annotations

import argparse
import time

import psycopg
from psycopg.types.json import Jsonb

from bench.harness import best_of, record, temporary_database

WORKFLOW = {
    "slug": "three-steps",
    "name": "Three internal steps",
    "trigger": {"event": "bench.item.created"},
    "steps": [
        {
            "id": "big",
            "if": {"field": "trigger.payload.amount", "op": "gte", "value": 50},
            "then": "tag",
            "else": "tag",
        },
        {"id": "tag", "set": {"label": "item {{trigger.payload.i}}"}},
        {
            "id": "total",
            "transform": {"op": "render", "template": "{{vars.label}} costs {{trigger.payload.amount}}"},
        },
    ],
}


def emit(conn: psycopg.Connection, n: int, event_type: str = "bench.item.created") -> None:
    conn.execute(
        "select conveyor.emit('bench', %s, jsonb_build_object('i', i, 'amount', i %% 100))"
        " from generate_series(1, %s) as i",
        (event_type, n),
    )


def drain(conn: psycopg.Connection, batch: int = 1000) -> None:
    while conn.execute("select conveyor.dispatch(%s)", (batch,)).fetchone() != (0,):
        pass


def reset(conn: psycopg.Connection) -> None:
    conn.execute(
        "truncate conveyor.step_runs, conveyor.execution_logs, conveyor.executions, conveyor.events cascade"
    )


def throughput(conn: psycopg.Connection, events: int, runs: int = 3) -> float:
    """Best of `runs`: committed events → completed executions, per second."""
    best = float("inf")
    for _ in range(runs):
        reset(conn)
        emit(conn, events)
        started = time.perf_counter()
        drain(conn)
        best = min(best, time.perf_counter() - started)
        done = conn.execute("select count(*) from conveyor.executions where status = 'completed'").fetchone()
        assert done == (events,), f"expected {events} completed executions, got {done}"
    return events / best


def per_event_cost(conn: psycopg.Connection, events: int) -> float:
    def run() -> None:
        reset(conn)
        emit(conn, events)
        drain(conn)

    return best_of(3, run) / events


def add_unrelated_subscriptions(conn: psycopg.Connection, count: int, offset: int) -> None:
    conn.execute(
        "select conveyor.publish('bench', jsonb_build_object("
        " 'slug', 'other-' || i, 'name', 'other ' || i,"
        " 'trigger', jsonb_build_object('event', 'other' || (i %% 50) || '.thing' || i || '.happened'),"
        " 'steps', jsonb_build_array(jsonb_build_object('id', 'noop', 'set', jsonb_build_object('x', 1)))))"
        " from generate_series(%s::integer, %s::integer) as i",
        (offset, offset + count - 1),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=10_000)
    args = parser.parse_args()
    with temporary_database() as url, psycopg.connect(url, autocommit=True) as conn:
        conn.execute("insert into conveyor.tenants (tenant_id, name) values ('bench', 'Bench')")
        conn.execute("select conveyor.publish('bench', %s)", (Jsonb(WORKFLOW),))

        rate = throughput(conn, args.events)
        print(f"dispatch + 3 internal steps: {rate:,.0f} executions/s (target >= 5,000/s)")

        add_unrelated_subscriptions(conn, 10, 0)
        few = per_event_cost(conn, args.events // 2)
        add_unrelated_subscriptions(conn, 9_990, 10)
        many = per_event_cost(conn, args.events // 2)
        ratio = many / few
        print(f"per-event cost, 10,000 vs 10 unrelated subscriptions: {ratio:.2f}x (target <= 1.2x)")

    record(
        "Dispatch and interpretation",
        "make bench-dispatch",
        f"| measure | result | target |\n|---|---|---|\n"
        f"| executions/s, dispatch + 3 internal steps ({args.events:,} events) | {rate:,.0f} | >= 5,000 |\n"
        f"| per-event cost, 10,000 vs 10 subscriptions on other types | {ratio:.2f}x "
        f"({many * 1e6:,.0f} µs vs {few * 1e6:,.0f} µs) | <= 1.2x |",
    )


if __name__ == "__main__":
    main()
