"""Many waiting executions: does the due-scan, dispatch or event matching slow down when 100,000
executions wait?

    .venv/bin/python -m bench.waiting_scale [--waiting 100000] [--rounds 10]

Two databases in the same cluster, migrated alike: `empty` and `loaded`. Into `loaded`,
100,000 executions are started through the engine (events emitted in bulk and dispatched
by `conveyor.dispatch`) by a workflow whose first step is a 30-day delay, so they all sit
in status `waiting` with a `resume_at` a month away. Both databases also hold 100
executions of a second workflow waiting on a 10-minute delay, and 100 executions waiting
for a reply (`wait_for_event` bench.reply.given, matched on payload.i); `loaded` also holds
100,000 executions of the same tenant waiting for another event (bench.other.given, each its
own payload.i). Then, alternating
between the two databases (same server, same moment, so machine noise hits both):

1. idle tick: `conveyor.tick()` with nothing to do (the due-scan the runner and pg_cron
   run all the time);
2. resume 100 due: `conveyor.resume_due(now() + 1 hour)` finds the 100 short delays due
   (and none of the 30-day ones), resumes them and runs them to completion; rolled back;
3. dispatch 1,000 new events: 1,000 events emitted, then `conveyor.dispatch(1000)` starts
   1,000 more waiting executions (timed: dispatch only); rolled back;
4. match 100 replies: 100 bench.reply.given events emitted, then `conveyor.dispatch(100)`
   matches them to the 100 waits for a reply and runs those executions to their end
   (timed: dispatch only; per event); rolled back.

Every sample is taken from both databases back to back (the order alternating); each
measure reports the median per database and the median of the pairs' ratios loaded / empty
(target <= 1.2x), which cancels the machine's load changing during the run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

from bench.harness import record, temporary_database
from conveyor.migrate import migrate

Conn = psycopg.Connection[Any]

LONG = {
    "slug": "wait-a-month",
    "name": "Wait a month",
    "trigger": {"event": "bench.wait.started"},
    "steps": [{"id": "pause", "delay": {"for": "30d"}}, {"id": "after", "set": {"done": True}}],
}
SHORT = {
    "slug": "wait-ten-minutes",
    "name": "Wait ten minutes",
    "trigger": {"event": "bench.short.started"},
    "steps": [{"id": "pause", "delay": {"for": "10m"}}, {"id": "after", "set": {"done": True}}],
}


def waiting_for(slug: str, started: str, given: str) -> dict[str, Any]:
    """Started by `started` (payload.i); waits 30 days for `given` with the same payload.i."""
    wait = {"event": given, "match": {"payload.i": "{{trigger.payload.i}}"}, "timeout": "30d"}
    return {
        "slug": slug,
        "name": slug,
        "trigger": {"event": started},
        "steps": [{"id": "wait", "wait_for_event": wait}, {"id": "after", "set": {"done": True}}],
    }


REPLY = waiting_for("wait-for-a-reply", "bench.reply.started", "bench.reply.given")
OTHER = waiting_for("wait-for-another-event", "bench.other.started", "bench.other.given")
SHORT_COUNT = 100
REPLY_COUNT = 100
NEW_EVENTS = 1_000


def prepare(conn: Conn) -> None:
    conn.execute("select conveyor.create_tenant('bench', 'Bench')")
    conn.execute("select conveyor.publish('bench', %s)", (Jsonb(LONG),))
    conn.execute("select conveyor.publish('bench', %s)", (Jsonb(SHORT),))
    conn.execute("select conveyor.publish('bench', %s)", (Jsonb(REPLY),))
    conn.execute("select conveyor.publish('bench', %s)", (Jsonb(OTHER),))
    start_executions(conn, "bench.short.started", SHORT_COUNT)
    start_executions(conn, "bench.reply.started", REPLY_COUNT)


def start_executions(conn: Conn, event_type: str, count: int, chunk: int = 20_000) -> None:
    """Emit `count` events in bulk and dispatch them through the engine."""
    for first in range(0, count, chunk):
        n = min(chunk, count - first)
        conn.execute(
            "select conveyor.emit('bench', %s, jsonb_build_object('i', i)) from generate_series(1, %s) as i",
            (event_type, n),
        )
        while conn.execute("select conveyor.dispatch(1000)").fetchone() != (0,):
            pass


def waiting(conn: Conn) -> int:
    row = conn.execute("select count(*) from conveyor.executions where status = 'waiting'").fetchone()
    return int(row[0]) if row else 0


def idle_tick(conn: Conn) -> float:
    start = time.perf_counter()
    result = conn.execute("select conveyor.tick()").fetchone()
    elapsed = time.perf_counter() - start
    assert result is not None and result[0]["resumed"] == 0, result
    return elapsed


def resume_due(conn: Conn) -> float:
    with conn.transaction(force_rollback=True):
        start = time.perf_counter()
        row = conn.execute("select conveyor.resume_due(now() + interval '1 hour', 1000)").fetchone()
        elapsed = time.perf_counter() - start
    assert row == (SHORT_COUNT,), row
    return elapsed


def dispatch_new(conn: Conn) -> float:
    with conn.transaction(force_rollback=True):
        conn.execute(
            "select conveyor.emit('bench', 'bench.wait.started', jsonb_build_object('i', i))"
            " from generate_series(1, %s) as i",
            (NEW_EVENTS,),
        )
        start = time.perf_counter()
        row = conn.execute("select conveyor.dispatch(%s)", (NEW_EVENTS,)).fetchone()
        elapsed = time.perf_counter() - start
    assert row == (NEW_EVENTS,), row
    return elapsed


def match_replies(conn: Conn) -> float:
    with conn.transaction(force_rollback=True):
        conn.execute(
            "select conveyor.emit('bench', 'bench.reply.given', jsonb_build_object('i', i))"
            " from generate_series(1, %s) as i",
            (REPLY_COUNT,),
        )
        start = time.perf_counter()
        row = conn.execute("select conveyor.dispatch(%s)", (REPLY_COUNT,)).fetchone()
        elapsed = time.perf_counter() - start
        done = conn.execute(
            "select count(*) from conveyor.executions as x join conveyor.workflows as w using (workflow_id)"
            " where w.slug = 'wait-for-a-reply' and x.status = 'completed'"
        ).fetchone()
    assert row == (REPLY_COUNT,) and done == (REPLY_COUNT,), (row, done)
    return elapsed / REPLY_COUNT


# (name, measure, samples per round): each sample is taken from both databases back to back
MEASURES: list[tuple[str, Callable[[Conn], float], int]] = [
    ("idle tick (`conveyor.tick()`, nothing due)", idle_tick, 40),
    (f"resume {SHORT_COUNT} due executions (`conveyor.resume_due`) and run them on", resume_due, 8),
    (f"dispatch {NEW_EVENTS:,} new events (`conveyor.dispatch`) into waiting executions", dispatch_new, 2),
    (f"match {REPLY_COUNT} replies to their waits (`conveyor.dispatch`), per event", match_replies, 4),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--waiting", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with temporary_database() as url:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("create database conveyor_loaded")
        loaded_url = make_conninfo(url, dbname="conveyor_loaded")
        migrate(loaded_url)  # no pg_cron here (it lives in one database); nothing else differs
        with (
            psycopg.connect(url, autocommit=True) as empty,
            psycopg.connect(loaded_url, autocommit=True) as loaded,
        ):
            for conn in (empty, loaded):
                prepare(conn)
            started = time.perf_counter()
            start_executions(loaded, "bench.wait.started", args.waiting)
            start_executions(loaded, "bench.other.started", args.waiting)
            load_s = time.perf_counter() - started
            for conn in (empty, loaded):
                # the steady state: a wait is confirmed by the tick after its registration (here
                # 200,000 registered at once: 1,000 per tick)
                while conn.execute(
                    "select exists (select from conveyor.waits where not confirmed)"
                ).fetchone() == (True,):
                    conn.execute("select conveyor.tick()")
                conn.execute("vacuum analyze")
            counts = {"empty": waiting(empty), "loaded": waiting(loaded)}
            base = SHORT_COUNT + REPLY_COUNT
            assert counts == {"empty": base, "loaded": base + 2 * args.waiting}, counts
            print(
                f"waiting executions: empty {counts['empty']:,}, loaded {counts['loaded']:,}"
                f" (created through emit + dispatch in {load_s:.0f} s)"
            )

            samples: dict[tuple[str, str], list[float]] = {}
            for name, measure, repeats in MEASURES:
                for i in range(repeats * args.rounds):
                    order = [("empty", empty), ("loaded", loaded)]
                    for label, conn in order if i % 2 else reversed(order):
                        samples.setdefault((name, label), []).append(measure(conn))

    rows = []
    worst = 0.0
    for name, _, _ in MEASURES:
        empty_all, loaded_all = samples[(name, "empty")], samples[(name, "loaded")]
        empty_s, loaded_s = statistics.median(empty_all), statistics.median(loaded_all)
        # each pair was measured back to back: the median of the pairs' ratios cancels the
        # machine's load changing over the run better than a ratio of the two medians
        ratio = statistics.median(b / a for a, b in zip(empty_all, loaded_all, strict=True))
        worst = max(worst, ratio)
        rows.append(f"| {name} | {empty_s * 1e3:.2f} ms | {loaded_s * 1e3:.2f} ms | {ratio:.2f}x | <= 1.2x |")
        print(
            f"{name}: empty {empty_s * 1e3:.2f} ms, loaded {loaded_s * 1e3:.2f} ms → {ratio:.2f}x (target <= 1.2x)"
        )
    print(f"worst ratio {worst:.2f}x: {'OK' if worst <= 1.2 else 'MISSED'} (target <= 1.2x)")

    body = (
        f"Two databases in one cluster; `loaded` holds {args.waiting:,} executions waiting on a 30-day delay\n"
        f"and {args.waiting:,} waiting for another event of the same tenant (started through `conveyor.emit`\n"
        f"+ `conveyor.dispatch`, {load_s:.0f} s), both hold {SHORT_COUNT} executions waiting on a 10-minute\n"
        f"delay and {REPLY_COUNT} waiting for a reply. Samples alternate between the databases\n"
        f"({args.rounds} rounds: {', '.join(str(r * args.rounds) for _, _, r in MEASURES)} samples each);\n"
        "medians. Ratio = median over the back-to-back pairs of loaded / empty.\n\n"
        "| measure | empty | loaded | ratio | target |\n|---|---|---|---|---|\n" + "\n".join(rows)
    )
    command = ".venv/bin/python -m bench.waiting_scale"
    if args.waiting != 100_000 or args.rounds != 10:
        command += f" --waiting {args.waiting} --rounds {args.rounds}"
    record("Waiting executions at scale", command, body)


if __name__ == "__main__":
    main()
