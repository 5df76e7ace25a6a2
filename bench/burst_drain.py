"""Burst drain: 1,000 events in one instant, each starting a workflow with a webhook.

    .venv/bin/python -m bench.burst_drain [--events 1000] [--runners 2] [--latency-ms 20] [--repeat 3]

A platform table `shop.orders` is watched (`conveyor.watch`); one INSERT of 1,000 rows
commits 1,000 `shop.order.created` events at once. Each starts a workflow whose step is a
`webhook.send` to a local HTTP receiver answering after a fixed latency (a stand-in for a
real endpoint). Real runner processes (`conveyor run`, default settings) do everything:
they are woken by the capture's NOTIFY, dispatch, send the webhooks and write back.

Measured from the INSERT's commit until every execution has completed, sampling every
100 ms on a separate connection: events not yet dispatched (including captured rows not
yet ingested), messages in the pgmq queue `conveyor_actions` (visible or in flight), and
executions not finished. Printed: the series, the drain time, the peak, and two checks:
everything is back to 0 at the end, and the outstanding work (pending events + unfinished
executions) never grows again after its peak.

Baseline (same run, same runners): a burst of 100 events, and a single event's latency.
Bursts of both sizes alternate, `--repeat` times each; the median runs are reported.
The ratio is the per-event drain time of the big burst over the 100-event burst: 1.0x
means the queue drains at the same rate however large the burst (no queueing collapse);
above 1 it degrades with the backlog.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from bench.harness import receiver, record, temporary_database

Conn = psycopg.Connection[Any]
SAMPLE_S = 0.1


@dataclass
class Sample:
    t: float
    pending: int  # events not dispatched yet (captured rows included)
    queued: int  # messages in the action queue
    active: int  # executions not finished

    @property
    def outstanding(self) -> int:
        return self.pending + self.active


def setup(conn: Conn, port: int) -> str:
    conn.execute("select conveyor.create_tenant('bench', 'Bench')")
    conn.execute(
        "create schema shop;"
        " create table shop.orders (id bigint primary key, tenant_id text not null, amount integer not null)"
    )
    conn.execute("select conveyor.watch('shop.orders', 'shop', 'order')")
    document = {
        "slug": "order-hook",
        "name": "Order webhook",
        "trigger": {"event": "shop.order.created"},
        "steps": [
            {
                "id": "notify",
                "action": "webhook.send",
                "with": {
                    "url": f"http://127.0.0.1:{port}/orders",
                    "body": {"order": "{{trigger.entity_id}}", "amount": "{{trigger.payload.new.amount}}"},
                },
            }
        ],
    }
    conn.execute("select conveyor.publish('bench', %s)", (Jsonb(document),))
    # where captured rows wait before they become events (a capture log, when there is one)
    row = conn.execute(
        "select pg_catalog.to_regclass('conveyor_capture.t' || 'shop.orders'::regclass::oid)::text"
    ).fetchone()
    captured = f" + (select count(*) from {row[0]})" if row and row[0] else ""
    return (
        "select (select count(*) from conveyor.events where dispatched_at is null)" + captured + ","
        " (select count(*) from pgmq.q_conveyor_actions),"
        " (select count(*) from conveyor.executions where status in ('pending', 'running', 'waiting')),"
        " (select count(*) from conveyor.executions where status not in ('pending', 'running', 'waiting')),"
        " (select count(*) from conveyor.executions where status <> 'completed'"
        " and status not in ('pending', 'running', 'waiting'))"
    )


def start_runners(url: str, count: int) -> list[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "CONVEYOR_DATABASE_URL": url,
        "CONVEYOR_ALLOW_PRIVATE_NETWORKS": "127.0.0.1/32",
        "CONVEYOR_LOG_LEVEL": "WARNING",
    }
    for name in ("CONVEYOR_POLL_INTERVAL", "CONVEYOR_CONCURRENCY", "CONVEYOR_BATCH_SIZE"):
        env.pop(name, None)  # the defaults: what an operator gets
    return [
        subprocess.Popen([sys.executable, "-m", "conveyor.cli", "run"], env=env, stderr=subprocess.DEVNULL)
        for _ in range(count)
    ]


class Burst:
    def __init__(self, url: str, probe: str) -> None:
        self.url = url
        self.probe = probe
        self.next_id = 1

    def run(
        self, conn: Conn, runners: list[subprocess.Popen[bytes]], count: int
    ) -> tuple[float, list[Sample]]:
        """Insert `count` rows in one statement; sample until all their executions completed."""
        row = conn.execute(self.probe).fetchone()
        assert row is not None and row[:3] == (0, 0, 0) and row[4] == 0, f"not idle before the burst: {row}"
        target = row[3] + count
        samples: list[Sample] = []
        done = threading.Event()
        failed: list[str] = []
        with psycopg.connect(self.url, autocommit=True) as watcher:

            def sample_loop() -> None:
                while True:
                    t = time.perf_counter() - started
                    r = watcher.execute(self.probe).fetchone()
                    assert r is not None
                    samples.append(Sample(t, int(r[0]), int(r[1]), int(r[2])))
                    if r[3] >= target:  # every execution finished
                        if r[4]:
                            failed.append(
                                f"{r[4]} executions did not complete (failed, cancelled or timed out)"
                            )
                        done.set()
                        return
                    if any(p.poll() is not None for p in runners):
                        failed.append("a runner exited early")
                        done.set()
                        return
                    time.sleep(max(0.0, SAMPLE_S - (time.perf_counter() - started - t)))

            first = self.next_id
            self.next_id += count
            conn.execute(
                "insert into shop.orders (id, tenant_id, amount)"
                " select i, 'bench', (i %% 100) + 1 from generate_series(%s::bigint, %s::bigint) as i",
                (first, first + count - 1),
            )
            started = time.perf_counter()  # the insert has committed (autocommit)
            thread = threading.Thread(target=sample_loop, daemon=True)
            thread.start()
            if not done.wait(timeout=120 + count / 10):
                raise RuntimeError(f"the burst did not drain in time: {compact(samples[-20:], 1)}")
            elapsed = time.perf_counter() - started
            thread.join(timeout=5)
        if failed:
            raise RuntimeError(failed[0])
        return elapsed, samples


def compact(samples: list[Sample], every: int) -> str:
    return " ".join(f"{s.t:.1f}s:{s.pending}/{s.queued}/{s.active}" for s in samples[::every] + samples[-1:])


def checks(samples: list[Sample]) -> tuple[Sample, bool, bool, int]:
    peak = max(samples, key=lambda s: s.outstanding)
    after = samples[samples.index(peak) :]
    tolerance = max(1, peak.outstanding // 100)
    rises = sum(1 for a, b in itertools.pairwise(after) if b.outstanding > a.outstanding + tolerance)
    end = samples[-1]
    return peak, (end.pending, end.queued, end.active) == (0, 0, 0), rises == 0, rises


def _yes(value: bool) -> str:
    return "yes" if value else "NO"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000)
    parser.add_argument("--baseline", type=int, default=100)
    parser.add_argument("--runners", type=int, default=2)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    server = receiver(args.latency_ms / 1000)
    with temporary_database() as url, psycopg.connect(url, autocommit=True) as conn:
        probe = setup(conn, server.server_address[1])
        runners = start_runners(url, args.runners)
        try:
            deadline = time.monotonic() + 30
            while conn.execute(
                "select count(*) from conveyor.runners where stopped_at is null"
            ).fetchone() != (args.runners,):
                if time.monotonic() > deadline:
                    raise RuntimeError("the runners did not start")
                time.sleep(0.05)
            burst = Burst(url, probe)
            singles = [burst.run(conn, runners, 1)[0] for _ in range(5)]
            # alternating, several times each; the run with the median drain time is shown
            bases, bigs = [], []
            for _ in range(args.repeat):
                bases.append(burst.run(conn, runners, args.baseline))
                bigs.append(burst.run(conn, runners, args.events))
            base_s, base_samples = sorted(bases, key=lambda r: r[0])[len(bases) // 2]
            big_s, big_samples = sorted(bigs, key=lambda r: r[0])[len(bigs) // 2]
        finally:
            for proc in runners:
                proc.send_signal(signal.SIGTERM)
            for proc in runners:
                proc.wait(timeout=60)
    server.shutdown()

    single = statistics.median(singles)
    peak, at_zero, monotone, rises = checks(big_samples)
    base_peak, base_zero, base_monotone, _ = checks(base_samples)
    per_big, per_base = big_s / args.events, base_s / args.baseline
    ratio = per_big / per_base
    every = max(1, len(big_samples) // 30)
    series = compact(big_samples, every)
    print(
        f"series (t: pending events / queued actions / unfinished executions), every {SAMPLE_S * every:.1f} s:"
    )
    print(series)
    verdict = "OK" if at_zero and monotone else "FAILED"
    print(
        f"{args.events:,} events: drained in {big_s:.2f} s ({args.events / big_s:,.0f} executions/s);"
        f" peak {peak.outstanding:,} outstanding at {peak.t:.1f} s (queue peak"
        f" {max(s.queued for s in big_samples):,}); at end 0/0/0: {at_zero};"
        f" no growth after the peak: {monotone} ({rises} rises) → {verdict}"
    )
    print(
        f"baseline {args.baseline} events: {base_s:.2f} s; single event latency {single * 1e3:.0f} ms;"
        f" per-event drain {per_big * 1e3:.2f} ms vs {per_base * 1e3:.2f} ms → {ratio:.2f}x"
    )
    body = f"""
{args.runners} runner processes (default settings: concurrency 16, batch 10, poll 1 s), receiver
latency {args.latency_ms:g} ms. One INSERT of N rows into a watched table (`conveyor.watch`), each row an
event starting a one-step workflow (`webhook.send`). Timed from the INSERT's commit until every
execution completed; sampled every {SAMPLE_S * 1000:.0f} ms. Bursts of both sizes alternate,
{args.repeat} of each; the run with the median drain time of each size is shown. Ratio = per-event drain time of the big burst
/ of the {args.baseline}-event burst (1.0x: the backlog drains at the same rate whatever its size).

| case | drain time | executions/s | peak outstanding | at end 0 / no growth after peak | per event | ratio |
|---|---|---|---|---|---|---|
| single event (median of 5) | {single * 1e3:.0f} ms | | 1 | | | |
| {args.baseline} events (baseline) | {base_s:.2f} s | {args.baseline / base_s:,.0f} | {base_peak.outstanding:,} \
| {_yes(base_zero)} / {_yes(base_monotone)} | {per_base * 1e3:.2f} ms | 1.00x |
| {args.events:,} events | {big_s:.2f} s | {args.events / big_s:,.0f} | {peak.outstanding:,} \
| {_yes(at_zero)} / {_yes(monotone)} | {per_big * 1e3:.2f} ms | {ratio:.2f}x |

Series of the {args.events:,}-event burst, `time: pending events / queued actions / unfinished
executions`, every {SAMPLE_S * every:.1f} s (and the last sample):

    {series}
"""
    command = ".venv/bin/python -m bench.burst_drain"
    if (args.events, args.baseline, args.runners, args.latency_ms, args.repeat) != (1_000, 100, 2, 20.0, 3):
        command += (
            f" --events {args.events} --baseline {args.baseline} --runners {args.runners}"
            f" --latency-ms {args.latency_ms:g} --repeat {args.repeat}"
        )
    record("Burst drain", command, body)


if __name__ == "__main__":
    main()
