"""Delay lateness: how late after its due time does a delayed execution resume?

    .venv/bin/python -m bench.delay_lateness [--executions 1000]

One runner process (`conveyor run`, default settings: poll interval 1 s) drives the
engine; nothing else ticks. A workflow waits with `delay: {until: "{{trigger.payload.due}}"}`
and then runs a `set` step. Lateness = the `set` step's start (clock time inside the tick
that resumed it) minus the delay's `resume_at`.

1. Baseline: 5 executions, each due alone (one per second).
2. Burst: 1,000 executions, all due within the same second (due times 1 ms apart), started
   (events emitted in one statement, dispatched by the runner) a few seconds before.

Target: the burst's maximum lateness <= 1 s. p50 / p99 / max are printed for both, and
the ratio of the burst's to the baseline's.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from bench.harness import record, temporary_database

Conn = psycopg.Connection[Any]

WORKFLOW = {
    "slug": "wait-until",
    "name": "Wait until the due time",
    "trigger": {"event": "bench.delay.started"},
    "steps": [
        {"id": "pause", "delay": {"until": "{{trigger.payload.due}}"}},
        {"id": "after", "set": {"done": True}},
    ],
}
LEAD_S = 5  # the burst is due this many seconds (at least) after it is emitted


def start_runner(url: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CONVEYOR_DATABASE_URL": url, "CONVEYOR_LOG_LEVEL": "WARNING"}
    for name in ("CONVEYOR_POLL_INTERVAL", "CONVEYOR_HEARTBEAT_INTERVAL", "CONVEYOR_BATCH_SIZE"):
        env.pop(name, None)  # the defaults: what an operator gets
    return subprocess.Popen([sys.executable, "-m", "conveyor.cli", "run"], env=env, stderr=subprocess.DEVNULL)


def wait(conn: Conn, proc: subprocess.Popen[bytes], query: str, expected: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while conn.execute(query).fetchone() != (expected,):
        if proc.poll() is not None:
            raise RuntimeError("the runner exited early")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {query!r} = {expected!r}")
        time.sleep(0.05)


def emit_due(conn: Conn, batch: str, count: int, first_due_sql: str, spacing_ms: float) -> None:
    conn.execute(
        "select conveyor.emit('bench', 'bench.delay.started', jsonb_build_object("
        f" 'batch', %s::text, 'due', {first_due_sql} + (i - 1) * %s * interval '1 millisecond'))"
        " from generate_series(1, %s) as i",
        (batch, spacing_ms, count),
    )


def lateness(conn: Conn, batch: str) -> list[float]:
    rows = conn.execute(
        "select extract(epoch from a.started_at - (d.output ->> 'resume_at')::timestamptz)::float8"
        " from conveyor.executions as e"
        " join conveyor.step_runs as d on d.execution_id = e.execution_id and d.step_id = 'pause'"
        " join conveyor.step_runs as a on a.execution_id = e.execution_id and a.step_id = 'after'"
        " where e.trigger -> 'payload' ->> 'batch' = %s and (d.output ->> 'waited')::boolean",
        (batch,),
    ).fetchall()
    return sorted(float(r[0]) for r in rows)


def quantile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def summary(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), quantile(values, 0.99), values[-1]


def completed(batch: str) -> str:
    return (
        "select count(*) from conveyor.executions"
        f" where status = 'completed' and trigger -> 'payload' ->> 'batch' = '{batch}'"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--executions", type=int, default=1_000)
    parser.add_argument("--singles", type=int, default=5)
    args = parser.parse_args()
    with temporary_database() as url, psycopg.connect(url, autocommit=True) as conn:
        conn.execute("select conveyor.create_tenant('bench', 'Bench')")
        conn.execute("select conveyor.publish('bench', %s)", (Jsonb(WORKFLOW),))
        runner = start_runner(url)
        try:
            wait(conn, runner, "select count(*) > 0 from conveyor.runners where stopped_at is null", True, 30)

            # baseline: one execution due at a time, a second apart
            emit_due(conn, "single", args.singles, "now() + interval '2 seconds'", 1000)
            wait(conn, runner, completed("single"), args.singles, 30 + args.singles)
            single = lateness(conn, "single")

            # the burst: every due time within one second, starting LEAD_S seconds ahead
            emit_due(
                conn,
                "burst",
                args.executions,
                f"date_trunc('second', now()) + interval '{LEAD_S} seconds'",
                1000 / args.executions,
            )
            wait(conn, runner, completed("burst"), args.executions, 60)
            burst = lateness(conn, "burst")
        finally:
            runner.send_signal(signal.SIGTERM)
            runner.wait(timeout=60)

    assert len(single) == args.singles and len(burst) == args.executions, (len(single), len(burst))
    s50, s99, smax = summary(single)
    b50, b99, bmax = summary(burst)
    ok = bmax <= 1.0
    lines = [
        f"| single delay, due alone ({args.singles} runs) | {s50 * 1e3:.0f} ms | {s99 * 1e3:.0f} ms"
        f" | {smax * 1e3:.0f} ms | 1.00x | |",
        f"| {args.executions:,} delays due within the same second | {b50 * 1e3:.0f} ms | {b99 * 1e3:.0f} ms"
        f" | {bmax * 1e3:.0f} ms | {bmax / smax:.1f}x | max <= 1 s: {'met' if ok else 'MISSED'} |",
    ]
    table = "| case | p50 | p99 | max | max vs baseline | target |\n|---|---|---|---|---|---|\n" + "\n".join(
        lines
    )
    print(table)
    print(f"max lateness {bmax * 1e3:.0f} ms: {'OK' if ok else 'MISSED'} (target <= 1000 ms)")
    body = f"""
One runner process with default settings (poll interval 1 s), nothing else ticking. Lateness =
start of the step after the delay minus the delay's resume_at (both database clock). The burst's
due times are 1 ms apart within one second, {LEAD_S} s after its events were emitted (one
statement; the runner dispatches them). The runner sleeps until the due time
`conveyor.tick()` reports (`next_due_in_s`), not until its next poll.

{table}
"""
    command = ".venv/bin/python -m bench.delay_lateness"
    if args.executions != 1_000 or args.singles != 5:
        command += f" --executions {args.executions} --singles {args.singles}"
    record("Delay lateness", command, body)


if __name__ == "__main__":
    main()
