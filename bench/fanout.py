"""Fan-out: a for_each's throughput against separate executions, and the join's cost per child.

    .venv/bin/python -m bench.fanout [--items 1000] [--small 100] [--large 10000] [--rounds 2]

(a) Throughput, through real runners: ONE execution whose for_each has `--items` items,
    each a `webhook.send` to a local HTTP receiver, concurrency 50, against the same
    number of one-step executions (one event each), with the same runner processes in the
    same run. Each side is timed from its events' emit to its last execution completed
    (the runners dispatch the events themselves); the rounds alternate and each side's best
    counts. The runners' concurrency is the for_each's (50), so both sides may have the
    same number of requests in flight. Target: fan-out / separate >= 0.8.

(b) Join cost, no runner: the database work of a whole fan-out per child, `--small` children
    against `--large` (the counters should make it constant: target large / small <= 1.2).
    Each case runs on one connection whose backend's CPU (from /proc) and wall clock are
    measured, from the parent's start to its completion:
      * internal: a for_each whose body is one `set` step, concurrency 50: every child runs
        and finishes inside the transaction that starts the parent (its next items start as
        earlier ones finish);
      * action: the body is one `webhook.send`, concurrency 50: each child waits for its
        action, and the results are written back 50 at a time (conveyor.read_actions /
        conveyor.write_back with made-up results), so children finish in separate
        write-back transactions, and each starts the next items.
    The items are a literal array in the document: a child copies its parent's trigger,
    variables and step outputs, so items taken from {{trigger.payload...}} would make each
    child's copy grow with the item count (reported separately, `trigger copy`).

The budgets (conveyor.max_fanout_children, max_fanout_children_per_execution,
max_chain_executions) are raised on the benchmark's database with ALTER DATABASE, so the
runners' sessions see them as well.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from bench.harness import process_cpu_s, receiver, record, temporary_database

Conn = psycopg.Connection[Any]
TENANT = "bench"
CONCURRENCY = 50
OUTPUT = {"status": 200, "headers": {"content-type": "text/plain"}, "body": "ok"}
RESET = "truncate conveyor.step_runs, conveyor.execution_logs, conveyor.executions, conveyor.events cascade"


def raise_budgets(conn: Conn, children: int) -> None:
    """Budgets wide enough for `children` children, for every later session of the database."""
    database = conn.execute("select current_database()").fetchone()
    assert database is not None
    for name, value in (
        ("max_fanout_children", children),
        ("max_fanout_children_per_execution", children),
        ("max_chain_executions", children * 4),
    ):
        conn.execute(f'alter database "{database[0]}" set conveyor.{name} = {int(value)}')
        conn.execute(f"set conveyor.{name} = {int(value)}")


def create_tenant(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("select conveyor.create_tenant(%s, 'Bench')", (TENANT,))


def publish(conn: Conn, document: dict[str, Any]) -> int:
    row = conn.execute(
        "select workflow_id from conveyor.publish(%s, %s)", (TENANT, Jsonb(document))
    ).fetchone()
    assert row is not None
    return int(row[0])


def hook(url: str, body: Any) -> dict[str, Any]:
    return {"id": "push", "action": "webhook.send", "with": {"url": url, "body": {"i": body}}}


# (a) throughput through runners


def start_runners(url: str, count: int, runner_concurrency: int) -> list[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "CONVEYOR_DATABASE_URL": url,
        "CONVEYOR_ALLOW_PRIVATE_NETWORKS": "127.0.0.1/32",
        "CONVEYOR_CONCURRENCY": str(runner_concurrency),
        "CONVEYOR_BATCH_SIZE": str(runner_concurrency),
        "CONVEYOR_POLL_INTERVAL": "0.05",
        "CONVEYOR_LOG_LEVEL": "WARNING",
    }
    return [
        subprocess.Popen([sys.executable, "-m", "conveyor.cli", "run"], env=env, stderr=subprocess.DEVNULL)
        for _ in range(count)
    ]


def stop_runners(runners: list[subprocess.Popen[bytes]]) -> None:
    for proc in runners:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in runners:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_done(conn: Conn, runners: list[subprocess.Popen[bytes]], query: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        row = conn.execute(query).fetchone()
        if row is not None and row[0]:
            return
        if any(proc.poll() is not None for proc in runners):
            raise RuntimeError("a runner exited early")
        if time.monotonic() > deadline:
            raise RuntimeError(f"not done after {timeout_s:.0f} s: {query}")
        time.sleep(0.02)


def separate_rate(conn: Conn, runners: list[subprocess.Popen[bytes]], items: int) -> float:
    conn.execute(RESET)
    start = time.perf_counter()
    conn.execute(
        "select conveyor.emit(%s, 'bench.one.fired', jsonb_build_object('i', i)) from generate_series(1, %s) as i",
        (TENANT, items),
    )
    wait_done(
        conn,
        runners,
        f"select count(*) = {items} from conveyor.executions where status = 'completed'",
        timeout_s=600,
    )
    return items / (time.perf_counter() - start)


def fanout_rate(conn: Conn, runners: list[subprocess.Popen[bytes]], items: int) -> float:
    conn.execute(RESET)
    start = time.perf_counter()
    conn.execute(
        "select conveyor.emit(%s, 'bench.fan.fired', jsonb_build_object('ids', (select jsonb_agg(i)"
        " from generate_series(1, %s) as i)))",
        (TENANT, items),
    )
    wait_done(
        conn,
        runners,
        "select coalesce(bool_or(status in ('completed', 'failed')), false) from conveyor.executions"
        " where parent_execution_id is null",
        timeout_s=600,
    )
    elapsed = time.perf_counter() - start
    row = conn.execute(
        "select status, step_outputs -> 'each' -> 'output' ->> 'completed' from conveyor.executions"
        " where parent_execution_id is null"
    ).fetchone()
    assert row == ("completed", str(items)), row
    return items / elapsed


def throughput(
    url: str, items: int, rounds: int, runner_count: int, latency_ms: float, runner_concurrency: int
) -> tuple[float, float]:
    server = receiver(latency_ms / 1000)
    sink = f"http://127.0.0.1:{server.server_address[1]}/hook"
    with psycopg.connect(url, autocommit=True) as conn:
        raise_budgets(conn, max(items, 1000))
        publish(
            conn,
            {
                "slug": "one",
                "name": "one",
                "trigger": {"event": "bench.one.fired"},
                "steps": [hook(sink, "{{trigger.payload.i}}")],
            },
        )
        publish(
            conn,
            {
                "slug": "fan",
                "name": "fan",
                "trigger": {"event": "bench.fan.fired"},
                "steps": [
                    {
                        "id": "each",
                        "for_each": {
                            "items": "{{trigger.payload.ids}}",
                            "concurrency": CONCURRENCY,
                            "steps": [hook(sink, "{{item}}")],
                        },
                    }
                ],
            },
        )
        runners = start_runners(url, runner_count, runner_concurrency)
        try:
            separate_rate(conn, runners, 20)  # warm up: the runners connected, plans cached
            separate: list[float] = []
            fanned: list[float] = []
            for _ in range(rounds):
                separate.append(separate_rate(conn, runners, items))
                fanned.append(fanout_rate(conn, runners, items))
        finally:
            stop_runners(runners)
            server.shutdown()
    return max(separate), max(fanned)


# (b) join cost per child, one connection


@dataclass
class Cost:
    cpu_us: float  # backend CPU per child
    wall_us: float  # wall clock per child


def backend_cpu_s(conn: Conn) -> float:
    row = conn.execute("select pg_backend_pid()").fetchone()
    assert row is not None
    return process_cpu_s(int(row[0]))


def fanout_document(slug: str, items: Any, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "slug": slug,
        "name": slug,
        "trigger": {"manual": True},
        "steps": [{"id": "each", "for_each": {"items": items, "concurrency": CONCURRENCY, "steps": [body]}}],
    }


def answer_actions(conn: Conn) -> int:
    """Reads up to CONCURRENCY queued actions and writes back made-up successes; how many."""
    rows = conn.execute(
        "select msg_id, message from conveyor.read_actions(%s, 30, 30)", (CONCURRENCY,)
    ).fetchall()
    if rows:
        results = [
            {"msg_id": msg_id, "step_run_id": message["step_run_id"], "ok": True, "output": OUTPUT}
            for msg_id, message in rows
        ]
        conn.execute("select count(*) from conveyor.write_back(%s)", (Jsonb(results),)).fetchone()
    return len(rows)


def join_cost(conn: Conn, workflow_id: int, children: int, payload: dict[str, Any], actions: bool) -> Cost:
    """Starts the workflow and (with actions) answers its children's actions until it completes."""
    conn.execute(RESET)
    conn.execute("vacuum analyze conveyor.executions, conveyor.fanouts, conveyor.step_runs")
    cpu, wall = backend_cpu_s(conn), time.perf_counter()
    row = conn.execute(
        "select conveyor.start_workflow(%s, %s)", (workflow_id, Jsonb({"payload": payload}))
    ).fetchone()
    assert row is not None
    while actions and answer_actions(conn):
        pass
    cpu, wall = backend_cpu_s(conn) - cpu, time.perf_counter() - wall
    state = conn.execute(
        "select status, step_outputs -> 'each' -> 'output' ->> 'completed', error from conveyor.executions"
        " where execution_id = %s",
        (row[0],),
    ).fetchone()
    assert state is not None and state[:2] == ("completed", str(children)), state
    return Cost(cpu * 1e6 / children, wall * 1e6 / children)


def join_costs(url: str, small: int, large: int, rounds: int) -> dict[str, tuple[int, Cost, Cost]]:
    """Per case, its large size and the (small, large) per-child costs, means over the runs."""
    sink = "http://127.0.0.1:9/never-called"
    bodies = {
        "internal": {"id": "keep", "set": {"seen": "{{item}}"}},
        "action": hook(sink, "{{item}}"),
    }
    out: dict[str, tuple[int, Cost, Cost]] = {}
    # a child's copy of a trigger holding all the items: 10,000 integers (34 kB stored) each
    # would pass conveyor.max_fanout_state_bytes (64 MB in all), which refuses the fan-out
    copied = min(large, 1000)
    with psycopg.connect(url, autocommit=True) as conn:
        raise_budgets(conn, large)
        cases: list[tuple[str, str, bool, bool, int]] = [
            ("internal (set)", "internal", False, False, large),
            ("action (write-backs of 50)", "action", True, False, large),
            ("trigger copy: items from {{trigger.payload.ids}}, set", "internal", False, True, copied),
        ]
        for label, body, actions, from_trigger, top in cases:
            pair = []
            for n in (small, top):
                items: Any = "{{trigger.payload.ids}}" if from_trigger else list(range(n))
                slug = f"{body}-{n}-{'t' if from_trigger else 'l'}"
                workflow_id = publish(conn, fanout_document(slug, items, bodies[body]))
                payload = {"ids": list(range(n))} if from_trigger else {}
                # /proc counts CPU in clock ticks (10 ms): the small case runs until it has
                # made half as many children as the large one, and costs are totals / children
                runs = [
                    join_cost(conn, workflow_id, n, payload, actions)
                    for _ in range(max(rounds, top // n // 2))
                ]
                pair.append(
                    Cost(sum(c.cpu_us for c in runs) / len(runs), sum(c.wall_us for c in runs) / len(runs))
                )
            out[label] = (top, pair[0], pair[1])
            print(f"{label}: {small} {pair[0]} vs {top} {pair[1]}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--items", type=int, default=1000, help="(a) items of the for_each / separate executions"
    )
    parser.add_argument("--runners", type=int, default=1)
    parser.add_argument("--latency-ms", type=float, default=10.0)
    parser.add_argument(
        "--runner-concurrency",
        type=int,
        default=16,
        help="(a) each runner's CONVEYOR_CONCURRENCY (16, the runner's default; at the for_each's own 50 the"
        " item window, not the engine, bounds the for_each: an item starts only when an earlier one's result"
        " is written back)",
    )
    parser.add_argument("--small", type=int, default=100, help="(b) children of the small fan-out")
    parser.add_argument("--large", type=int, default=10000, help="(b) children of the large fan-out")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-record", action="store_true", help="print only, leave bench/RESULTS.md alone")
    args = parser.parse_args()

    with temporary_database() as url:
        create_tenant(url)
        separate, fanned = throughput(
            url, args.items, args.rounds, args.runners, args.latency_ms, args.runner_concurrency
        )
        costs = join_costs(url, args.small, args.large, args.rounds)

    ratio = fanned / separate
    rows = "\n".join(
        f"| {label} | {s.cpu_us:.0f} / {s.wall_us:.0f} | {top} | {g.cpu_us:.0f} / {g.wall_us:.0f} |"
        f" {g.cpu_us / s.cpu_us:.2f}x / {g.wall_us / s.wall_us:.2f}x |"
        for label, (top, s, g) in costs.items()
    )
    body = f"""
(a) {args.runners} runner process(es), runner concurrency {args.runner_concurrency}, receiver latency {args.latency_ms:g} ms,
timed from emit to the last completion, best of {args.rounds} alternating rounds.

| case | items/s | ratio |
|---|---|---|
| {args.items} one-step executions (baseline) | {separate:.0f} | 1.00x |
| one for_each of {args.items} items, concurrency {CONCURRENCY} | {fanned:.0f} | {ratio:.2f}x (target >= 0.8) |

(b) The whole fan-out per child, PostgreSQL backend CPU / wall clock in µs, from the parent's start to its
completion, {args.small} vs {args.large} children, concurrency {CONCURRENCY}: the mean over runs making at least\n{args.large // 2} children in all (ratio target <= 1.2).

| body | {args.small} children: µs CPU / wall per child | large | large: µs CPU / wall per child | ratio |
|---|---|---|---|---|
{rows}
"""
    print(body)
    if not args.no_record:
        record(
            "Fan-out",
            f".venv/bin/python -m bench.fanout --items {args.items} --large {args.large} --rounds {args.rounds}"
            f" --runner-concurrency {args.runner_concurrency}",
            body,
        )


if __name__ == "__main__":
    main()
