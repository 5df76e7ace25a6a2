"""Runner throughput: queued webhook actions → performed → written back, per second.

    .venv/bin/python -m bench.runner_throughput [--actions 400] [--latency-ms 20]

A local HTTP receiver answers each webhook after a fixed latency (a stand-in for a real
endpoint). The actions are queued first (events emitted and dispatched), then one runner
process is started and timed until every execution is completed. The baseline is the
same runner with concurrency 1, measured in the same run; the ratio shows what bounded
concurrency and batched write-back buy when the receiver, not Postgres, is the bottleneck.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from bench.harness import receiver, record, temporary_database


def queue_actions(conn: psycopg.Connection[Any], count: int) -> None:
    conn.execute(
        "truncate conveyor.step_runs, conveyor.execution_logs, conveyor.executions, conveyor.events cascade"
    )
    conn.execute(
        "select conveyor.emit('bench', 'bench.hook.fired', jsonb_build_object('i', i))"
        " from generate_series(1, %s) as i",
        (count,),
    )
    while conn.execute("select conveyor.dispatch(1000)").fetchone() != (0,):
        pass
    queued = conn.execute("select count(*) from pgmq.q_conveyor_actions").fetchone()
    assert queued == (count,), queued


def run_once(url: str, conn: psycopg.Connection[Any], count: int, concurrency: int) -> float:
    queue_actions(conn, count)
    env = {
        **os.environ,
        "CONVEYOR_DATABASE_URL": url,
        "CONVEYOR_ALLOW_PRIVATE_NETWORKS": "127.0.0.1/32",
        "CONVEYOR_CONCURRENCY": str(concurrency),
        "CONVEYOR_BATCH_SIZE": str(max(10, concurrency)),
        "CONVEYOR_POLL_INTERVAL": "0.05",
        "CONVEYOR_LOG_LEVEL": "WARNING",
    }
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "conveyor.cli", "run"], env=env, stderr=subprocess.DEVNULL)
    try:
        while True:
            row = conn.execute(
                "select count(*) from conveyor.executions where status = 'completed'"
            ).fetchone()
            if row == (count,):
                break
            if proc.poll() is not None:
                raise RuntimeError("the runner exited early")
            time.sleep(0.02)
        elapsed = time.perf_counter() - start
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--actions", type=int, default=400)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    server = receiver(args.latency_ms / 1000)
    port = server.server_address[1]
    with temporary_database() as url, psycopg.connect(url, autocommit=True) as conn:
        conn.execute("select conveyor.create_tenant('bench', 'Bench')")
        document = {
            "slug": "hook",
            "name": "hook",
            "trigger": {"event": "bench.hook.fired"},
            "steps": [
                {
                    "id": "call",
                    "action": "webhook.send",
                    "with": {"url": f"http://127.0.0.1:{port}/hook", "body": {"i": "{{trigger.payload.i}}"}},
                }
            ],
        }
        conn.execute("select conveyor.publish('bench', %s)", (Jsonb(document),))
        baseline = run_once(url, conn, max(50, args.actions // 4), 1)
        bounded = run_once(url, conn, args.actions, args.concurrency)
    server.shutdown()
    body = f"""
One runner process, receiver latency {args.latency_ms:g} ms, actions queued before the runner starts
(timed from process start, so startup is included). Ratio = concurrency {args.concurrency} / concurrency 1.

| case | actions/s | ratio |
|---|---|---|
| concurrency 1 (baseline), {max(50, args.actions // 4)} actions | {baseline:.0f} | 1.00x |
| concurrency {args.concurrency}, {args.actions} actions | {bounded:.0f} | {bounded / baseline:.2f}x |
"""
    print(body)
    record("Runner throughput", f".venv/bin/python -m bench.runner_throughput --actions {args.actions}", body)


if __name__ == "__main__":
    main()
