"""Noisy neighbour: one tenant's burst against another tenant's steady trickle (issue 19).

    .venv/bin/python -m bench.noisy_neighbour [--burst 50000] [--rate 20] [--seconds 20]
        [--runners 2] [--latency-ms 10] [--smoke] [--no-record]

Two tenants, `noisy` (A) and `quiet` (B), share one watched platform table (`shop.orders`,
captured by `conveyor.watch`), as the tenants of a platform do. Each has its own workflow,
one `webhook.send` to a local HTTP sink (its own process, asyncio, answering after
`--latency-ms`) that notes the wall clock of each request's arrival and its body (the
tenant, the phase and the row's sequence number). Real `conveyor run` processes with
default settings (`--runners`) do all the work. Between phases the runners keep running and
the engine's tables are emptied (TRUNCATE, VACUUM ANALYZE).

1. **B alone**: one INSERT per event, each its own transaction, `--rate` a second for
   `--seconds`; latency = the wall clock right after the INSERT's commit → the request's
   arrival at the sink; p50 / p99.
2. **A alone**: `--burst` rows in ONE INSERT (one commit); timed from that commit until
   the last of A's executions has completed (probed every 50 ms): drain time and completed
   executions per second.
3. **Both**: B's stream as in (1) starts, one second later A's burst as in (2) commits, and
   B's stream goes on until A's backlog is drained. B's latency counts only B's events
   committed while A's backlog was not empty (from A's commit until its last completion);
   A's throughput as in (2).

Printed: B's p50 / p99 alone and during A's burst and their ratio (target: p99 during /
p99 alone <= 2), A's throughput alone and with B and their ratio (target >= 0.9), and
whether every event's webhook arrived exactly once (none lost, none twice) in every phase.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from bench.burst_drain import start_runners
from bench.e2e_measure import percentile
from bench.harness import record, temporary_database
from bench.latency_sink import LatencySink, latency_sink

Conn = psycopg.Connection[Any]
HERE = Path(__file__).resolve().parent
NOISY, QUIET = "noisy", "quiet"  # tenant A (the burst) and tenant B (the steady stream)
PROBE_S = 0.05
LEAD_S = 1.0  # B's stream runs this long before A's burst commits (phase 3)
RESET = (
    "truncate conveyor.step_runs, conveyor.execution_logs, conveyor.executions, conveyor.events,"
    " pgmq.a_conveyor_actions cascade"
)


# --- the engine's side ------------------------------------------------------------------


def workflow(tenant: str, sink_url: str) -> dict[str, Any]:
    return {
        "slug": "order-hook",
        "name": "Order hook",
        "trigger": {"event": "shop.order.created"},
        "steps": [
            {
                "id": "notify",
                "action": "webhook.send",
                "with": {
                    "url": f"{sink_url}/{tenant}",
                    "body": {
                        "tenant": tenant,
                        "phase": "{{trigger.payload.new.phase}}",
                        "seq": "{{trigger.payload.new.seq}}",
                    },
                },
            }
        ],
    }


@dataclass
class Engine:
    """The benchmark's database: two tenants, the watched table, a workflow each."""

    url: str
    conn: Conn
    workflow_ids: dict[str, int]
    capture_log: str

    @classmethod
    def setup(cls, url: str, sink_url: str) -> Engine:
        conn = psycopg.connect(url, autocommit=True)
        conn.execute(
            "create schema shop; create table shop.orders (id bigint generated always as identity primary key,"
            " tenant_id text not null, phase text not null, seq integer not null)"
        )
        conn.execute("select conveyor.watch('shop.orders', 'shop', 'order')")
        ids = {}
        for tenant in (NOISY, QUIET):
            conn.execute("select conveyor.create_tenant(%s, %s)", (tenant, tenant.title()))
            row = conn.execute(
                "select workflow_id from conveyor.publish(%s, %s)",
                (tenant, Jsonb(workflow(tenant, sink_url))),
            ).fetchone()
            assert row is not None
            ids[tenant] = int(row[0])
        log = conn.execute("select conveyor.capture_log('shop.orders')").fetchone()
        assert log is not None
        return cls(url, conn, ids, str(log[0]))

    def burst(self, phase: str, count: int) -> float:
        """`count` rows of A in one INSERT; the wall clock right after its commit."""
        self.conn.execute(
            "insert into shop.orders (tenant_id, phase, seq) select %s, %s, i from generate_series(0, %s - 1) as i",
            (NOISY, phase, count),
        )
        return time.time()

    def busy(self, tenant: str) -> bool:
        """Whether `tenant` has work not finished: captured rows not yet events, events not
        dispatched, executions not finished (each an index probe or the first row of a scan)."""
        row = self.conn.execute(
            f"select exists (select from {self.capture_log} where tenant_id = %(t)s)"
            " or exists (select from conveyor.events where tenant_id = %(t)s and dispatched_at is null)"
            " or exists (select from conveyor.executions where workflow_id = %(w)s"
            " and status in ('pending', 'running', 'waiting'))",
            {"t": tenant, "w": self.workflow_ids[tenant]},
        ).fetchone()
        return bool(row and row[0])

    def wait_done(self, tenant: str, runners: list[subprocess.Popen[bytes]], timeout_s: float) -> float:
        """Probes every 50 ms until `tenant` is not busy; that wall clock."""
        deadline = time.monotonic() + timeout_s
        while self.busy(tenant):
            if any(proc.poll() is not None for proc in runners):
                raise RuntimeError("a runner exited early")
            if time.monotonic() > deadline:
                raise RuntimeError(f"tenant {tenant}'s work not done after {timeout_s:.0f} s")
            time.sleep(PROBE_S)
        return time.time()

    def finished(self, tenant: str) -> tuple[int, int]:
        """`tenant`'s finished executions: (completed, any other end)."""
        row = self.conn.execute(
            "select count(*) filter (where status = 'completed'), count(*) filter (where status <> 'completed')"
            " from conveyor.executions where tenant_id = %s and finished_at is not null",
            (tenant,),
        ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    def dispatched(self, tenant: str, phase: str) -> dict[int, float]:
        """When each of `tenant`'s events of `phase` was dispatched: its execution's created_at
        (the dispatching transaction's start), by sequence number."""
        rows = self.conn.execute(
            "select (trigger -> 'payload' -> 'new' ->> 'seq')::integer, extract(epoch from created_at)::float8"
            " from conveyor.executions where tenant_id = %s and trigger -> 'payload' -> 'new' ->> 'phase' = %s",
            (tenant, phase),
        ).fetchall()
        return {int(seq): float(at) for seq, at in rows}

    def reset(self) -> None:
        self.conn.execute(RESET)
        self.conn.execute("vacuum analyze conveyor.events, conveyor.executions, conveyor.step_runs")
        self.conn.execute(f"vacuum analyze {self.capture_log}, pgmq.q_conveyor_actions")


class Stream:
    """B's events: one INSERT (its own transaction) on a fixed schedule, `rate` a second,
    until stop(); four producer threads, so one slow commit does not delay the next ones."""

    def __init__(self, url: str, phase: str, rate: float) -> None:
        self.url, self.phase, self.rate = url, phase, rate
        self.committed: dict[int, float] = {}
        self.stopped = threading.Event()
        self.local = threading.local()
        self.connections: list[Conn] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._produce, daemon=True)

    def start(self) -> Stream:
        self.thread.start()
        return self

    def stop(self) -> dict[int, float]:
        self.stopped.set()
        self.thread.join()
        for conn in self.connections:
            conn.close()
        return self.committed

    def _one(self, seq: int) -> None:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = psycopg.connect(self.url, autocommit=True)
            with self.lock:
                self.connections.append(conn)
        conn.execute(
            "insert into shop.orders (tenant_id, phase, seq) values (%s, %s, %s)", (QUIET, self.phase, seq)
        )
        self.committed[seq] = time.time()

    def _produce(self) -> None:
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = []
            seq = 0
            while not self.stopped.is_set():
                delay = start + seq / self.rate - time.perf_counter()
                if delay > 0 and self.stopped.wait(delay):
                    break
                futures.append(pool.submit(self._one, seq))
                seq += 1
            for future in futures:
                future.result()


class Backlog:
    """A's backlog over time, sampled every `every_s` on a connection of its own: (wall clock,
    A's events not dispatched yet (captured rows included), messages in the action queue)."""

    def __init__(self, engine: Engine, every_s: float = 0.5) -> None:
        self.engine, self.every_s = engine, every_s
        self.samples: list[tuple[float, int, int]] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def start(self) -> Backlog:
        self.thread.start()
        return self

    def stop(self) -> list[tuple[float, int, int]]:
        self.stopped.set()
        self.thread.join()
        return self.samples

    def _sample(self) -> None:
        with psycopg.connect(self.engine.url, autocommit=True) as conn:
            while not self.stopped.is_set():
                row = conn.execute(
                    f"select (select count(*) from {self.engine.capture_log} where tenant_id = %(t)s)"
                    " + (select count(*) from conveyor.events where tenant_id = %(t)s and dispatched_at is null),"
                    " (select count(*) from pgmq.q_conveyor_actions)",
                    {"t": NOISY},
                ).fetchone()
                assert row is not None
                self.samples.append((time.time(), int(row[0]), int(row[1])))
                self.stopped.wait(self.every_s)


# --- measuring --------------------------------------------------------------------------


@dataclass
class Deliveries:
    """One phase's events of one tenant: commit wall clocks and the sink's arrivals."""

    committed: dict[int, float]
    arrivals: dict[int, list[float]] = field(default_factory=dict)
    dispatched: dict[int, float] = field(default_factory=dict)

    def lost(self) -> int:
        return sum(1 for seq in self.committed if seq not in self.arrivals)

    def twice(self) -> int:
        return sum(1 for seq, at in self.arrivals.items() if len(at) > 1 or seq not in self.committed)

    def latencies_ms(
        self, since: float = 0.0, until: float = float("inf"), stage: str = "all"
    ) -> list[float]:
        """Commit → first arrival at the sink (stage "all"), commit → dispatched ("dispatch")
        or dispatched → arrival ("queue": the queue, the runner and the request), in ms, of
        the events committed between `since` and `until`, sorted."""
        out = []
        for seq, at in self.committed.items():
            if not since <= at <= until or seq not in self.arrivals:
                continue
            arrived, dispatched = self.arrivals[seq][0], self.dispatched.get(seq, math.nan)
            start, end = {"all": (at, arrived), "dispatch": (at, dispatched), "queue": (dispatched, arrived)}[
                stage
            ]
            out.append((end - start) * 1000)
        return sorted(v for v in out if not math.isnan(v))


def collect(sink: LatencySink, phase: str, expected: dict[str, Deliveries]) -> None:
    """Move the sink's arrivals of `phase` into `expected` (per tenant), waiting up to 10 s for
    stragglers. (A duplicate is counted when it has arrived by then: every execution has
    completed before, so a second delivery would be a message read again by a runner.)"""
    deadline = time.monotonic() + 10
    while True:
        for at, body in sink.arrivals():
            if body.get("phase") == phase and body.get("tenant") in expected:
                expected[body["tenant"]].arrivals.setdefault(int(body["seq"]), []).append(at)
        missing = sum(d.lost() for d in expected.values())
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for deliveries in expected.values():
        for seqs in deliveries.arrivals.values():
            seqs.sort()


@dataclass
class Result:
    b_alone: Deliveries
    a_alone: Deliveries
    a_alone_s: float
    a_both: Deliveries
    b_both: Deliveries
    a_both_s: float
    a_both_window: tuple[float, float]  # A's commit and last completion, phase 3 (wall clock)
    backlog: list[tuple[float, int, int]]  # phase 3: (wall clock, A's undispatched events, queued actions)

    def timeline(self, buckets: int = 10) -> list[dict[str, float]]:
        """Phase 3 from A's commit to its drain in `buckets` equal slices: B's events committed in
        each (latency p50 / p99 in all, p50 of each stage) and A's backlog at the slice's start."""
        since, until = self.a_both_window
        width = (until - since) / buckets
        rows = []
        for k in range(buckets):
            start, end = since + k * width, since + (k + 1) * width
            total = self.b_both.latencies_ms(start, end)
            first = next((b for b in self.backlog if b[0] >= start), (0.0, 0, 0))
            rows.append(
                {
                    "from_s": k * width,
                    "events": len(total),
                    "p50": percentile(total, 50),
                    "p99": percentile(total, 99),
                    "dispatch_p50": percentile(self.b_both.latencies_ms(start, end, "dispatch"), 50),
                    "queue_p50": percentile(self.b_both.latencies_ms(start, end, "queue"), 50),
                    "a_undispatched": first[1],
                    "queued": first[2],
                }
            )
        return rows

    def summary(self) -> dict[str, Any]:
        burst = len(self.a_alone.committed)
        alone = self.b_alone.latencies_ms()
        during = self.b_both.latencies_ms(*self.a_both_window)
        worst = max(
            (
                (self.b_both.arrivals[seq][0] - at, at - self.a_both_window[0])
                for seq, at in self.b_both.committed.items()
                if seq in self.b_both.arrivals
            ),
            default=(float("nan"), float("nan")),
        )
        phases = (self.b_alone, self.a_alone, self.a_both, self.b_both)
        out: dict[str, Any] = {
            "b_alone_events": len(alone),
            "b_alone_p50": percentile(alone, 50),
            "b_alone_p99": percentile(alone, 99),
            "b_during_events": len(during),
            "b_during_p50": percentile(during, 50),
            "b_during_p99": percentile(during, 99),
            "b_worst_ms": worst[0] * 1000,
            "b_worst_at_s": worst[1],
            "a_alone_s": self.a_alone_s,
            "a_alone_per_s": burst / self.a_alone_s,
            "a_both_s": self.a_both_s,
            "a_both_per_s": burst / self.a_both_s,
            "lost": sum(d.lost() for d in phases),
            "twice": sum(d.twice() for d in phases),
            "events": sum(len(d.committed) for d in phases),
        }
        for name, phase, window in (
            ("b_alone", self.b_alone, (0.0, math.inf)),
            ("b_during", self.b_both, self.a_both_window),
        ):
            for stage in ("dispatch", "queue"):
                values = phase.latencies_ms(*window, stage=stage)
                out[f"{name}_{stage}_p50"], out[f"{name}_{stage}_p99"] = (
                    percentile(values, 50),
                    percentile(values, 99),
                )
        out["timeline"] = self.timeline()
        out["p99_ratio"] = out["b_during_p99"] / out["b_alone_p99"]
        out["throughput_ratio"] = out["a_both_per_s"] / out["a_alone_per_s"]
        return out


def run(url: str, *, burst: int, rate: float, seconds: float, runners: int, latency_ms: float) -> Result:
    """The three phases on the migrated database `url`, with `runners` real runners."""
    with latency_sink(latency_ms) as sink:
        engine = Engine.setup(url, sink.url)
        procs = start_runners(url, runners)
        try:
            deadline = time.monotonic() + 60
            while engine.conn.execute("select count(*) from conveyor.live_runners()").fetchone() != (
                runners,
            ):
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise RuntimeError("the runners did not start")
                time.sleep(0.05)
            # warm-up, not measured: the runners' connections, plans and the sink's
            engine.burst("warmup", 50)
            warm = Stream(url, "warmup", rate * 5).start()
            time.sleep(0.5)
            warm.stop()
            for tenant in (NOISY, QUIET):
                engine.wait_done(tenant, procs, 120)
            sink.arrivals()
            engine.reset()

            stream = Stream(url, "alone", rate).start()
            time.sleep(seconds)
            b_alone = Deliveries(stream.stop())
            engine.wait_done(QUIET, procs, 120)
            collect(sink, "alone", {QUIET: b_alone})
            check_finished(engine, QUIET, len(b_alone.committed))
            b_alone.dispatched = engine.dispatched(QUIET, "alone")
            engine.reset()

            committed = engine.burst("alone", burst)
            a_alone_s = engine.wait_done(NOISY, procs, 120 + burst / 20) - committed
            a_alone = Deliveries(dict.fromkeys(range(burst), committed))
            collect(sink, "alone", {NOISY: a_alone})
            check_finished(engine, NOISY, burst)
            engine.reset()

            stream = Stream(url, "both", rate).start()
            time.sleep(LEAD_S)
            backlog = Backlog(engine).start()
            committed = engine.burst("both", burst)
            drained = engine.wait_done(NOISY, procs, 120 + burst / 20)
            samples = backlog.stop()
            time.sleep(LEAD_S)
            b_both = Deliveries(stream.stop())
            engine.wait_done(QUIET, procs, 120)
            a_both = Deliveries(dict.fromkeys(range(burst), committed))
            collect(sink, "both", {NOISY: a_both, QUIET: b_both})
            check_finished(engine, NOISY, burst)
            check_finished(engine, QUIET, len(b_both.committed))
            b_both.dispatched = engine.dispatched(QUIET, "both")
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(timeout=60)
            engine.conn.close()
    return Result(
        b_alone, a_alone, a_alone_s, a_both, b_both, drained - committed, (committed, drained), samples
    )


def check_finished(engine: Engine, tenant: str, expected: int) -> None:
    completed, other = engine.finished(tenant)
    if (completed, other) != (expected, 0):
        raise RuntimeError(
            f"tenant {tenant}: {completed} executions completed and {other} ended otherwise, of {expected}"
        )


# --- reporting --------------------------------------------------------------------------


def _met(value: float, ok: bool) -> str:
    return f"{value:.2f}x ({'met' if ok else 'NOT met'})"


def report(s: dict[str, Any], args: argparse.Namespace) -> str:
    timeline = "\n".join(
        f"| {r['from_s']:.1f} s | {r['events']} | {r['p50']:.0f} / {r['p99']:.0f} ms | {r['dispatch_p50']:.0f} ms"
        f" | {r['queue_p50']:.0f} ms | {r['a_undispatched']:,} | {r['queued']:,} |"
        for r in s["timeline"]
    )
    return f"""
{args.runners} runner processes (default settings: concurrency 16, batch 10, poll 1 s), sink latency
{args.latency_ms:g} ms (its own process). Tenants A (`{NOISY}`) and B (`{QUIET}`) share one watched table; each has
a one-step workflow (`webhook.send`). B: one INSERT per event, {args.rate:g} a second; latency = commit → the
request's arrival at the sink. A: {args.burst:,} rows in one INSERT; throughput = {args.burst:,} / (commit → last
execution completed). Phases in one run, the engine's tables emptied between them: B alone for
{args.seconds:g} s, A alone, then both (B's stream starts {LEAD_S:g} s before A's burst commits and runs until it is
drained; B's latency counts only B's events committed while A's backlog was not empty).

| | B p50 | B p99 | B events | A drain | A completed/s |
|---|---|---|---|---|---|
| B alone | {s["b_alone_p50"]:.0f} ms | {s["b_alone_p99"]:.0f} ms | {s["b_alone_events"]:,} | | |
| A alone | | | | {s["a_alone_s"]:.2f} s | {s["a_alone_per_s"]:,.0f} |
| both (B during A's burst) | {s["b_during_p50"]:.0f} ms | {s["b_during_p99"]:.0f} ms \
| {s["b_during_events"]:,} | {s["a_both_s"]:.2f} s | {s["a_both_per_s"]:,.0f} |

* B p99 during A's burst / B p99 alone: {_met(s["p99_ratio"], s["p99_ratio"] <= 2)} (target <= 2)
* A completed/s with B / A alone: {_met(s["throughput_ratio"], s["throughput_ratio"] >= 0.9)} (target >= 0.9)
* where B's time went, p50 / p99: commit → dispatched (its execution created) {s["b_alone_dispatch_p50"]:.0f} / \
{s["b_alone_dispatch_p99"]:.0f} ms alone, {s["b_during_dispatch_p50"]:.0f} / {s["b_during_dispatch_p99"]:.0f} ms during A's burst; dispatched → \
arrival (the queue, the runner, the request) {s["b_alone_queue_p50"]:.0f} / {s["b_alone_queue_p99"]:.0f} ms alone, \
{s["b_during_queue_p50"]:.0f} / {s["b_during_queue_p99"]:.0f} ms during
* B's slowest event during the run: {s["b_worst_ms"]:.0f} ms, committed {s["b_worst_at_s"]:+.1f} s from A's commit
* every webhook arrived exactly once: {"yes" if s["lost"] == s["twice"] == 0 else "NO"} \
({s["events"]:,} events, {s["lost"]} lost, {s["twice"]} arrived twice)

Phase 3 from A's commit to its drain in tenths: B's events committed in each, their latency, its two stages
(p50), and A's backlog at the slice's start (A's events not dispatched yet, messages in the action queue):

| from A's commit | B events | B p50 / p99 | commit → dispatched p50 | dispatched → arrival p50 \
| A undispatched | queued actions |
|---|---|---|---|---|---|---|
{timeline}
"""


def against(revision: str, args: argparse.Namespace) -> None:
    """This benchmark, with the same flags, in `revision` unpacked into a temporary directory
    (bench/ab_revisions.py's prepare_tree and tree_env): that revision's runner and engine,
    this benchmark's two files copied in. Nothing is recorded."""
    from bench.ab_revisions import prepare_tree, tree_env

    flags = [f"--burst={args.burst}", f"--rate={args.rate:g}", f"--seconds={args.seconds:g}"]
    flags += [f"--runners={args.runners}", f"--latency-ms={args.latency_ms:g}", "--no-record"]
    with tempfile.TemporaryDirectory(prefix="conveyor-noisy-") as tmp:
        tree = prepare_tree(revision, Path(tmp) / "tree")
        for name in ("noisy_neighbour.py", "latency_sink.py"):
            shutil.copy2(HERE / name, tree.path / "bench" / name)
        print(f"against {revision} ({tree.commit}), in {tree.path}", flush=True)
        subprocess.run(
            [sys.executable, "-m", "bench.noisy_neighbour", *flags],
            cwd=tree.path,
            env=tree_env(tree.path),
            check=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--burst", type=int, default=50_000, help="A's events, one INSERT")
    parser.add_argument("--rate", type=float, default=20.0, help="B's events per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="B alone: how long")
    parser.add_argument("--runners", type=int, default=2)
    parser.add_argument("--latency-ms", type=float, default=10.0, help="the sink's answer latency")
    parser.add_argument(
        "--smoke", action="store_true", help="small and quick (burst 2,000, 3 s); not recorded"
    )
    parser.add_argument("--no-record", action="store_true", help="print only, leave bench/RESULTS.md alone")
    parser.add_argument(
        "--revision",
        help="run against this git revision's engine (its runner, migrations and SQL; this benchmark's"
        " code), as bench/ab_revisions.py unpacks one; print only",
    )
    args = parser.parse_args()
    if args.smoke:
        args.burst, args.seconds, args.no_record = 2_000, 3.0, True
    if args.revision:
        against(args.revision, args)
        return
    with temporary_database() as url:
        result = run(
            url,
            burst=args.burst,
            rate=args.rate,
            seconds=args.seconds,
            runners=args.runners,
            latency_ms=args.latency_ms,
        )
    summary = result.summary()
    print(json.dumps(summary), flush=True)
    body = report(summary, args)
    print(body)
    if not args.no_record:
        command = ".venv/bin/python -m bench.noisy_neighbour"
        defaults = (50_000, 20.0, 20.0, 2, 10.0)
        if (args.burst, args.rate, args.seconds, args.runners, args.latency_ms) != defaults:
            command += (
                f" --burst {args.burst} --rate {args.rate:g} --seconds {args.seconds:g}"
                f" --runners {args.runners} --latency-ms {args.latency_ms:g}"
            )
        record("Noisy neighbour", command, body)


if __name__ == "__main__":
    main()
