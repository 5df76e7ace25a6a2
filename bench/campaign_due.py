"""Campaign sends falling due at once: N enrollments (default 100,000; --n 10000 for a
quicker run) whose email step falls due in the same minute, tenant send rate 6,000 a
minute, send window 09:00-17:00 in each contact's zone (a tenth of them in Tokyo, out of
their window at that time). Measured on the engine's side, with clock control
(`conveyor.tick(p_now => T)`): how fast the ticks resume them and reserve their send slots
(throughput), whether the rate holds (sends reserved per calendar minute ≤ 6,000) and the
window holds (every send inside its contact's window), and each send's lateness against
T (p50 / p99: the rate spreads N sends over N / 6,000 minutes by design). The SMTP sends
themselves are the runner's (tests/e2e/test_campaign_e2e.py); not measured here."""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from bench.harness import record, temporary_database

Conn = psycopg.Connection[dict[str, Any]]
RATE = 6000


def campaign() -> dict[str, Any]:
    return {
        "slug": "due",
        "name": "Due at once",
        "audience": "contact",
        "send_window": {"hours": "09:00-17:00", "timezone": "contact"},
        "send_rate": {"per_minute": RATE},
        "steps": [
            {"id": "pause", "channel": "wait", "delay": "7d"},
            {"id": "hello", "channel": "email", "subject": "Hi {{contact.name}}", "text": "Hi"},
        ],
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(url: str, n: int) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        conn.execute("select conveyor.create_tenant('acme', 'Acme')")
        conn.execute(
            "create table public.contacts (id bigint primary key, tenant_id text, name text, email text, timezone text)"
        )
        conn.execute(
            "insert into conveyor.entities (entity, table_name, id_column, tenant_column) values ('contact', 'public.contacts', 'id', 'tenant_id')"
        )
        conn.execute(
            "insert into public.contacts select g, 'acme', 'c' || g, 'c' || g || '@example.com',"
            " case when g %% 10 = 0 then 'Asia/Tokyo' else 'UTC' end from generate_series(1, %s) as g",
            (n,),
        )  # fmt: skip
        conn.execute("select * from conveyor.apply_campaign('acme', %s)", (Jsonb(campaign()),))
        started = time.perf_counter()
        for first in range(1, n + 1, 1000):
            ids = [str(i) for i in range(first, min(n, first + 999) + 1)]
            conn.execute("select count(*) from conveyor.enroll_campaign('acme', 'due', %s)", (ids,))
        enroll_s = time.perf_counter() - started
        # T: a Monday 10:00 UTC at least 7 days ahead (19:00 in Tokyo: outside its window)
        today = datetime.now(UTC).replace(hour=10, minute=0, second=0, microsecond=0)
        due = today + timedelta(days=7 + (7 - today.weekday()) % 7 + 7)
        started = time.perf_counter()
        ticks = 0
        while True:
            ticks += 1
            conn.execute("select conveyor.tick(p_now => %s, p_batch => 1000)", (due,))
            left = conn.execute(
                "select count(*) as n from conveyor.executions where current_step = 'pause-delay' and status = 'waiting'"
            ).fetchone()
            if not left or left["n"] == 0:
                break
        due_s = time.perf_counter() - started
        rows = conn.execute(
            "select c.timezone, (sr.output ->> 'send_at')::timestamptz as at from conveyor.step_runs sr"
            " join conveyor.executions e using (execution_id)"
            " join public.contacts c on c.id::text = e.entity_id where sr.step_id = 'hello-slot'"
        ).fetchall()
        per_minute = conn.execute(
            "select max(used) as m from conveyor.campaign_send_slots where key = 'email'"
        ).fetchone()
    outside = 0
    lateness: list[float] = []
    for r in rows:
        local = r["at"].astimezone(__import__("zoneinfo").ZoneInfo(r["timezone"]))
        if not 9 <= local.hour < 17:
            outside += 1
        if r["timezone"] == "UTC":
            lateness.append((r["at"] - due).total_seconds())
    return {
        "n": n, "enroll_s": enroll_s, "due_s": due_s, "ticks": ticks, "slots": len(rows), "outside": outside,
        "max_per_minute": per_minute["m"] if per_minute else None,
        "p50": percentile(lateness, 0.5), "p99": percentile(lateness, 0.99),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100_000, help="enrollments")
    args = parser.parse_args()
    with temporary_database() as url:
        r = run(url, args.n)
    print(r)
    body = (
        f"{r['n']:,} enrollments due at the same instant T, rate {RATE:,}/min per tenant, window 09:00-17:00 in\n"
        "each contact's zone (10 % in Tokyo, outside it at T); engine side only (ticks with p_now = T).\n\n"
        "| enrolling | resuming + slot reservation | throughput | slots | max sends / minute | outside window |"
        " lateness p50 / p99 (UTC contacts) |\n|---|---|---|---|---|---|---|\n"
        f"| {r['enroll_s']:.1f} s ({r['n'] / r['enroll_s']:,.0f}/s) | {r['due_s']:.1f} s in {r['ticks']} ticks |"
        f" {r['slots'] / r['due_s']:,.0f}/s | {r['slots']:,} | {r['max_per_minute']:,} | {r['outside']} |"
        f" {r['p50']:.0f} s / {r['p99']:.0f} s |"
    )
    command = ".venv/bin/python -m bench.campaign_due" + (f" --n {args.n}" if args.n != 100_000 else "")
    record("Campaign sends due at once", command, body)
    if r["outside"] or (r["max_per_minute"] or 0) > RATE or r["slots"] != r["n"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
