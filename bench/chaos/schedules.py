"""Scenario 5: two runners and two pg_cron jobs race on cron schedules over simulated time.

conveyor.tick(p_now) and conveyor.fire_schedules(p_now) take the time as a parameter, so
an hour (or a day) of schedules runs in seconds. Four threads, each with its own
connection, share one simulated clock:

* two "runners" call tick() over and over, at the clock's time or, one call in three,
  at a time up to 50 s behind it (a caller that read the clock and was scheduled late);
* two "pg_cron jobs" call tick() and fire_schedules() once per simulated minute, at the
  minute's first second, however far past it the runners already are.

The clock moves forward 5-45 s at a time (never a minute or more, so every minute is seen)
once a runner has ticked at its current time. Afterwards each schedule must have
exactly one firing for each slot croniter computes for it, each with its completed
execution, and nothing else.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from croniter import croniter
from psycopg.types.json import Jsonb

from bench.chaos.checks import Outcome, _limited
from bench.chaos.workload import Db

# 2031-05-06 is a Tuesday; 08:30 UTC is 10:30 in Berlin, 04:30 in New York, 14:00 in Kolkata.
SIM_START = datetime(2031, 5, 6, 8, 30, tzinfo=UTC)

# (cron, time zone): every minute, steps, lists, ranges, weekdays, day of month, hours that
# match in one zone and not in another, and zones with half- and quarter-hour offsets.
CRONS = [
    ("* * * * *", "UTC"),
    ("*/5 * * * *", "UTC"),
    ("*/2 * * * *", "Europe/Berlin"),
    ("*/7 * * * *", "America/New_York"),
    ("3-59/10 * * * *", "Asia/Kolkata"),
    ("0,15,30,45 * * * *", "Asia/Kathmandu"),
    ("*/3 9-17 * * MON-FRI", "Europe/Berlin"),
    ("*/10 9-17 * * MON-FRI", "America/New_York"),
    ("17 * * * *", "UTC"),
    ("*/4 8 * * TUE", "UTC"),
    ("59 * * * *", "Australia/Adelaide"),
    ("*/6 * 6 5 *", "UTC"),
]


def expected_slots(cron: str, timezone: str, start: datetime, end: datetime) -> list[datetime]:
    """The slots in (start, end], by croniter (the engine's own cron code is not used)."""
    it = croniter(cron, start.astimezone(ZoneInfo(timezone)))
    slots: list[datetime] = []
    while True:
        slot: datetime = it.get_next(datetime).astimezone(UTC)
        if slot > end:
            return slots
        slots.append(slot)


def next_slot(cron: str, timezone: str, after: datetime) -> datetime:
    slot: datetime = croniter(cron, after.astimezone(ZoneInfo(timezone))).get_next(datetime)
    return slot.astimezone(UTC)


@dataclass
class _Clock:
    value: datetime
    version: int = 0
    done: bool = False
    exact: Counter[int] = field(default_factory=Counter)
    cron_minutes: Counter[datetime] = field(default_factory=Counter)
    cond: threading.Condition = field(default_factory=threading.Condition)


def _minute(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


def schedule_race(url: str, *, schedules: int = 100, minutes: int = 60, seed: int = 5) -> Outcome:
    outcome = Outcome("schedule-race")
    start, end = SIM_START, SIM_START + timedelta(minutes=minutes)
    db = Db(url)
    db.rows("select conveyor.create_tenant('chaos', 'Chaos')")
    plan: dict[int, tuple[str, str]] = {}
    for n in range(schedules):
        cron, timezone = CRONS[n % len(CRONS)]
        document = {
            "slug": f"every-{n}",
            "name": f"{cron} {timezone}",
            "trigger": {
                "schedule": {"cron": cron, "timezone": timezone, "overlap": "allow" if n % 2 else "skip"}
            },
            "steps": [{"id": "note", "set": {"slot": "{{trigger.payload.slot}}"}}],
        }
        row = db.one("select workflow_id from conveyor.publish('chaos', %s)", (Jsonb(document),))
        plan[int(row["workflow_id"])] = (cron, timezone)
        # Start the schedule at the simulated start (publish set it from the real clock).
        db.rows(
            "update conveyor.schedules set next_run_at = %s where workflow_id = %s",
            (next_slot(cron, timezone, start), row["workflow_id"]),
        )

    clock = _Clock(start)
    fired: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    failures: list[str] = []
    lock = threading.Lock()

    def caller(
        name: str, body: Callable[[psycopg.Connection[tuple[object, ...]], random.Random], None]
    ) -> None:
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                body(conn, random.Random(f"{seed}-{name}"))
        except Exception as exc:  # reported, and the run stops
            with lock:
                failures.append(f"{name}: {exc!r}")
            with clock.cond:
                clock.done = True
                clock.cond.notify_all()

    def count(name: str, result: object) -> None:
        n = int(result["fired"]) if isinstance(result, dict) else int(str(result))
        with lock:
            fired[name] += n
            calls[name] += 1

    def runner(name: str) -> Callable[[psycopg.Connection[tuple[object, ...]], random.Random], None]:
        def body(conn: psycopg.Connection[tuple[object, ...]], rng: random.Random) -> None:
            while True:
                with clock.cond:
                    if clock.done:
                        return
                    at, version = clock.value, clock.version
                late = rng.random() < 1 / 3
                if late:
                    at = max(start, at - timedelta(seconds=rng.uniform(1, 50)))
                    with lock:
                        calls[name + " late"] += 1
                row = conn.execute("select conveyor.tick(%s)", (at,)).fetchone()
                assert row is not None
                count(name, row[0])
                if not late:
                    with clock.cond:
                        clock.exact[version] += 1
                        clock.cond.notify_all()
                time.sleep(rng.uniform(0, 0.002))

        return body

    def pg_cron(
        name: str, function: str
    ) -> Callable[[psycopg.Connection[tuple[object, ...]], random.Random], None]:
        def moved_on(last: datetime | None) -> Callable[[], bool]:
            return lambda: clock.done or _minute(clock.value) != last

        def body(conn: psycopg.Connection[tuple[object, ...]], rng: random.Random) -> None:
            last: datetime | None = None
            while True:
                with clock.cond:
                    clock.cond.wait_for(moved_on(last))
                    if clock.done:
                        return
                    minute = _minute(clock.value)
                time.sleep(rng.uniform(0, 0.003))
                row = conn.execute(f"select conveyor.{function}(%s)", (minute,)).fetchone()
                assert row is not None
                count(name, row[0])
                last = minute
                with clock.cond:
                    clock.cron_minutes[minute] += 1
                    clock.cond.notify_all()

        return body

    threads = [
        threading.Thread(target=caller, args=("runner-1", runner("runner-1"))),
        threading.Thread(target=caller, args=("runner-2", runner("runner-2"))),
        threading.Thread(target=caller, args=("pg_cron-1", pg_cron("pg_cron-1", "tick"))),
        threading.Thread(target=caller, args=("pg_cron-2", pg_cron("pg_cron-2", "fire_schedules"))),
    ]
    rng = random.Random(seed)
    began = time.monotonic()
    steps = 0
    step_deadline = time.monotonic() + 120
    for thread in threads:
        thread.start()
    try:
        while True:
            with clock.cond:
                seen = clock.cond.wait_for(
                    lambda: (
                        clock.done
                        or (clock.exact[clock.version] >= 1 and clock.cron_minutes[_minute(clock.value)] >= 2)
                    ),
                    timeout=120,
                )
                if clock.done or not seen:
                    if not seen:
                        failures.append(f"no tick at simulated {clock.value} within 120 s")
                    break
                now = clock.value
            # A tick at `now` that found a due schedule locked by a racing caller skips it:
            # time moves on only once no schedule is due any more (as real time does not
            # wait, but the next tick comes within the same minute).
            due = db.one(
                "select count(*) as n from conveyor.schedules where active and next_run_at <= %s", (now,)
            )
            if due["n"]:
                if time.monotonic() > step_deadline:
                    failures.append(
                        f"{due['n']} schedule(s) still due at simulated {now} after 120 s of ticks"
                    )
                    break
                time.sleep(0.01)
                continue
            if now >= end:
                break
            with clock.cond:
                clock.value = min(now + timedelta(seconds=rng.uniform(5, 45)), end)
                clock.version += 1
                steps += 1
                clock.cond.notify_all()
            step_deadline = time.monotonic() + 120
    finally:
        with clock.cond:
            clock.done = True
            clock.cond.notify_all()
        for thread in threads:
            thread.join(timeout=120)
    outcome.seconds = time.monotonic() - began
    outcome.problems += failures

    # --- checks ---------------------------------------------------------------------------
    firings = db.rows(
        "select s.workflow_id, f.slot, f.outcome, f.missed_slots, x.status,"
        " (x.trigger -> 'payload' ->> 'slot')::timestamptz as payload_slot,"
        " (x.vars ->> 'slot')::timestamptz as noted_slot"
        " from conveyor.schedule_firings as f join conveyor.schedules as s using (schedule_id)"
        " left join conveyor.executions as x using (execution_id) order by s.workflow_id, f.slot"
    )
    by_workflow: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in firings:
        by_workflow[int(row["workflow_id"])].append(row)
    problems: list[str] = []
    expected_total = 0
    for workflow_id, (cron, timezone) in plan.items():
        expected = expected_slots(cron, timezone, start, end)
        expected_total += len(expected)
        got = [r["slot"] for r in by_workflow.get(workflow_id, [])]
        if got != expected:
            missing = sorted(set(expected) - set(got))
            extra = sorted(set(got) - set(expected))
            problems.append(
                f"workflow {workflow_id} ({cron!r} {timezone}): {len(got)} firings for {len(expected)} slots;"
                f" missing {[str(s) for s in missing[:3]]}, extra {[str(s) for s in extra[:3]]}"
            )
        for r in by_workflow.get(workflow_id, []):
            if (r["outcome"], r["missed_slots"], r["status"]) != ("started", 0, "completed") or not (
                r["payload_slot"] == r["noted_slot"] == r["slot"]
            ):
                problems.append(f"workflow {workflow_id} slot {r['slot']}: {r}")
    schedules_after = db.rows("select workflow_id, next_run_at, last_slot from conveyor.schedules")
    for row in schedules_after:
        cron, timezone = plan[int(row["workflow_id"])]
        expected = expected_slots(cron, timezone, start, end)
        want = (next_slot(cron, timezone, end), expected[-1] if expected else None)
        if (row["next_run_at"], row["last_slot"]) != want:
            problems.append(
                f"workflow {row['workflow_id']}: next_run_at {row['next_run_at']}, last_slot {row['last_slot']};"
                f" expected {want[0]}, {want[1]}"
            )
    executions = db.one("select count(*) as n from conveyor.executions")["n"]
    if executions != len(firings):
        problems.append(f"{executions} executions for {len(firings)} firings")
    if sum(fired.values()) != len(firings):
        problems.append(f"the callers reported {sum(fired.values())} firings, the table has {len(firings)}")
    outcome.problems += _limited(problems)
    outcome.statuses = {
        str(r["status"]): int(r["n"])
        for r in db.rows("select status, count(*) as n from conveyor.executions group by status")
    }
    outcome.faults = {
        "racing callers": len(threads),
        "ticks": sum(v for k, v in calls.items() if not k.endswith("late")),
        "late ticks (behind the clock)": sum(v for k, v in calls.items() if k.endswith("late")),
    }
    outcome.figures = {
        "schedules": schedules,
        "simulated minutes": minutes,
        "clock steps": steps,
        "expected slots (croniter)": expected_total,
        "firings": len(firings),
        "executions": int(executions),
        **{f"firings by {name}": n for name, n in sorted(fired.items())},
    }
    db.close()
    return outcome
