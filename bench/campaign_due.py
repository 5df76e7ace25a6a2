"""Campaign sends falling due at once: N enrollments (default 100,000; --n 10000 for a
quicker run) whose email step falls due in the same minute, tenant send rate 6,000 a
minute, send window 09:00-17:00 in each contact's zone (a tenth of the contacts in a zone
where it is closed at that time).

--mode realtime (the default, `make bench-campaign`): the enrollments' delays end inside
one real calendar minute T; real runners (`conveyor run`, default settings; --runners,
default 2) tick the engine as in production and send through an smtp connection to a
local aiosmtpd sink in this process. For each message: its arrival against its allowed time (its reserved slot,
the `hello-slot` step's `send_at`): lateness p50 / p99 / max; sends arriving per calendar
minute (≤ 6,000); none outside its contact's window (arrival and slot); every message
exactly once; throughput. A full run takes ~17 minutes of wall time by design.

--mode engine: the engine's side only, with clock control (`conveyor.tick(p_now => T)`):
how fast the ticks resume the enrollments and reserve their slots, the rate and window of
the reserved slots, and each slot's lateness against T."""

from __future__ import annotations

import argparse
import email
import email.policy
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from bench.harness import _free_port, process_cpu_s, record, temporary_database

Conn = psycopg.Connection[dict[str, Any]]
RATE = 6000


def campaign(connection: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
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
    if connection:
        doc["connection"] = connection
    return doc


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def prepare(conn: Conn, n: int, inside: str, outside: str, smtp_port: int | None = None) -> float:
    """Tenant, n contacts (every tenth in `outside`), the campaign (sending through a local
    SMTP server when smtp_port is given); enrolls them all. Returns the enrolling time in s."""
    conn.execute("select conveyor.create_tenant('acme', 'Acme')")
    if smtp_port:
        conn.execute(
            "insert into conveyor.connections (tenant_id, name, kind, config) values ('acme', 'mail', 'smtp', %s)",
            (Jsonb({"host": "127.0.0.1", "port": smtp_port, "security": "none", "from": "news@acme.test",
                    "unsubscribe_url": "https://hooks.acme.test"}),),
        )  # fmt: skip
    conn.execute(
        "create table public.contacts (id bigint primary key, tenant_id text, name text, email text, timezone text)"
    )
    conn.execute(
        "insert into conveyor.entities (entity, table_name, id_column, tenant_column) values ('contact', 'public.contacts', 'id', 'tenant_id')"
    )
    conn.execute(
        "insert into public.contacts select g, 'acme', 'c' || g, 'c' || g || '@example.com',"
        " case when g %% 10 = 0 then %s else %s end from generate_series(1, %s) as g",
        (outside, inside, n),
    )  # fmt: skip
    conn.execute(
        "select * from conveyor.apply_campaign('acme', %s)", (Jsonb(campaign("mail" if smtp_port else None)),)
    )
    started = time.perf_counter()
    for first in range(1, n + 1, 1000):
        ids = [str(i) for i in range(first, min(n, first + 999) + 1)]
        conn.execute("select count(*) from conveyor.enroll_campaign('acme', 'due', %s)", (ids,))
    return time.perf_counter() - started


def slots(conn: Conn) -> dict[str, tuple[datetime, str]]:
    """Each contact's reserved send time and zone."""
    rows = conn.execute(
        "select e.entity_id, c.timezone, (sr.output ->> 'send_at')::timestamptz as at from conveyor.step_runs sr"
        " join conveyor.executions e using (execution_id)"
        " join public.contacts c on c.id::text = e.entity_id where sr.step_id = 'hello-slot'"
    ).fetchall()
    return {r["entity_id"]: (r["at"], r["timezone"]) for r in rows}


def in_window(at: datetime, zone: str) -> bool:
    return 9 <= at.astimezone(ZoneInfo(zone)).hour < 17


def run_engine(url: str, n: int) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        enroll_s = prepare(conn, n, "UTC", "Asia/Tokyo")
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
        reserved = slots(conn)
        per_minute = conn.execute(
            "select max(used) as m from conveyor.campaign_send_slots where key = 'email'"
        ).fetchone()
    lateness = [(at - due).total_seconds() for at, zone in reserved.values() if zone == "UTC"]
    return {
        "n": n, "enroll_s": enroll_s, "due_s": due_s, "ticks": ticks, "slots": len(reserved),
        "outside": sum(not in_window(at, zone) for at, zone in reserved.values()),
        "max_per_minute": per_minute["m"] if per_minute else None,
        "p50": percentile(lateness, 0.5), "p99": percentile(lateness, 0.99),
    }  # fmt: skip


def zones(now: datetime) -> tuple[str, str]:
    """Two fixed-offset zones: one where `now` is 09:xx (the window is open for 7 hours more),
    one 12 hours off (closed). Etc/GMT-X is UTC+X."""
    offset = (9 - now.hour) % 24
    offset = offset - 24 if offset > 14 else offset
    other = offset - 12 if offset - 12 >= -12 else offset + 12
    return tuple(f"Etc/GMT{-o:+d}" if o else "UTC" for o in (offset, other))  # type: ignore[return-value]


class Sink:
    """An aiosmtpd server keeping each message's arrival time and recipients."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, str]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.arrivals.extend((time.time(), str(r)) for r in envelope.rcpt_tos)
        assert message["Message-ID"]
        return "250 OK"


def start_runner(url: str, log: Path) -> subprocess.Popen[bytes]:
    from cryptography.fernet import Fernet

    env = {
        **os.environ, "CONVEYOR_DATABASE_URL": url, "CONVEYOR_ALLOW_PRIVATE_NETWORKS": "127.0.0.1/32",
        "CONVEYOR_SECRET_KEY": Fernet.generate_key().decode(), "CONVEYOR_LOG_LEVEL": "WARNING",
    }  # fmt: skip
    for name in (
        "CONVEYOR_POLL_INTERVAL",
        "CONVEYOR_HEARTBEAT_INTERVAL",
        "CONVEYOR_BATCH_SIZE",
        "CONVEYOR_CONCURRENCY",
    ):
        env.pop(name, None)  # the defaults: what an operator gets
    return subprocess.Popen(
        [sys.executable, "-m", "conveyor.cli", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )


def run_realtime(url: str, n: int, runner_count: int) -> dict[str, Any]:
    from aiosmtpd.controller import Controller

    sink = Sink()
    port = _free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    inside, outside = zones(datetime.now(UTC))
    logs = Path(tempfile.mkdtemp(prefix="conveyor-campaign-bench-"))
    runners: list[subprocess.Popen[bytes]] = []
    cpu_s = 0.0
    try:
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            enroll_s = prepare(conn, n, inside, outside, smtp_port=port)
            # every delay ends inside the calendar minute T, at least 30 s from now
            due = (datetime.now(UTC) + timedelta(seconds=90)).replace(second=0, microsecond=0)
            conn.execute(
                "update conveyor.executions set resume_at = %s + random() * interval '59.9 seconds'"
                " where current_step = 'pause-delay' and status = 'waiting'",
                (due,),
            )
            runners = [start_runner(url, logs / f"runner-{i}.log") for i in range(runner_count)]
            expected = n - n // 10
            deadline = time.time() + (due - datetime.now(UTC)).total_seconds() + n / RATE * 60 + 300
            while len(sink.arrivals) < expected and time.time() < deadline:
                if any(r.poll() is not None for r in runners):
                    raise RuntimeError(f"a runner exited early (logs: {logs})")
                time.sleep(2)
                print(
                    f"{datetime.now(UTC):%H:%M:%S} received {len(sink.arrivals):,} of {expected:,}",
                    flush=True,
                )
            time.sleep(5)  # anything arriving twice or late
            cpu_s = sum(process_cpu_s(r.pid) for r in runners)
            reserved = slots(conn)
            reserved_max = conn.execute(
                "select max(used) as m from conveyor.campaign_send_slots where key = 'email'"
            ).fetchone()
            # how late the tick resumed each waiting slot (the rest is the queue, runner and SMTP)
            resumed = conn.execute(
                "select extract(epoch from (output ->> 'resumed_at')::timestamptz"
                " - (output ->> 'send_at')::timestamptz)::float8 as s from conveyor.step_runs"
                " where step_id = 'hello-slot' and (output ->> 'waited')::boolean and output ? 'resumed_at'"
            ).fetchall()
            completed = conn.execute(
                "select count(*) as n from conveyor.step_runs where step_id = 'hello-send' and status = 'completed'"
            ).fetchone()
    finally:
        for r in runners:
            r.terminate()
        for r in runners:
            r.wait(60)
        controller.stop()
    arrivals = sorted(sink.arrivals)
    by_contact = Counter(r.split("@")[0][1:] for _, r in arrivals)
    lateness = []
    outside_window = 0
    for at, rcpt in arrivals:
        send_at, zone = reserved[rcpt.split("@")[0][1:]]
        lateness.append(at - send_at.timestamp())
        outside_window += not in_window(datetime.fromtimestamp(at, UTC), zone)
    per_minute = Counter(int(at // 60) for at, _ in arrivals)
    first, last = (arrivals[0][0], arrivals[-1][0]) if arrivals else (0.0, 0.0)
    return {
        "n": n, "inside": inside, "outside_zone": outside, "enroll_s": enroll_s, "expected": expected,
        "received": len(arrivals), "contacts": len(by_contact), "twice": sum(c > 1 for c in by_contact.values()),
        "outside_window": outside_window,
        "slots_outside": sum(not in_window(at, zone) for at, zone in reserved.values()),
        "slots": len(reserved), "completed": completed["n"] if completed else 0,
        "reserved_max": reserved_max["m"] if reserved_max else None,
        "arrived_max": max(per_minute.values(), default=0), "minutes": len(per_minute),
        "span_s": last - first, "from_due_s": last - due.timestamp(),
        "p50": percentile(lateness, 0.5), "p99": percentile(lateness, 0.99), "max": max(lateness, default=0.0),
        "resume_p50": percentile([x["s"] for x in resumed], 0.5),
        "resume_p99": percentile([x["s"] for x in resumed], 0.99),
        "runners": runner_count, "cpu_ms": cpu_s * 1000 / max(len(arrivals), 1),
    }  # fmt: skip


def report_engine(r: dict[str, Any], command: str) -> None:
    body = (
        f"{r['n']:,} enrollments due at the same instant T, rate {RATE:,}/min per tenant, window 09:00-17:00 in\n"
        "each contact's zone (10 % in Tokyo, outside it at T); engine side only (ticks with p_now = T).\n\n"
        "| enrolling | resuming + slot reservation | throughput | slots | max sends / minute | outside window |"
        " lateness p50 / p99 (UTC contacts) |\n|---|---|---|---|---|---|---|\n"
        f"| {r['enroll_s']:.1f} s ({r['n'] / r['enroll_s']:,.0f}/s) | {r['due_s']:.1f} s in {r['ticks']} ticks |"
        f" {r['slots'] / r['due_s']:,.0f}/s | {r['slots']:,} | {r['max_per_minute']:,} | {r['outside']} |"
        f" {r['p50']:.0f} s / {r['p99']:.0f} s |"
    )
    record("Campaign sends due at once (engine side)", command, body)


def report_realtime(r: dict[str, Any], command: str) -> None:
    body = (
        f"{r['n']:,} enrollments whose email step falls due inside the same real minute T (their delays end\n"
        f"at random instants of it), rate {RATE:,}/min per tenant, window 09:00-17:00 in each contact's zone\n"
        f"(90 % in {r['inside']}, open; 10 % in {r['outside_zone']}, closed: their slots are the window's next\n"
        "opening, not sent during the run). `conveyor run` (default settings) ticks and sends through\n"
        "an smtp connection to a local aiosmtpd sink. Lateness: a message's arrival at the sink minus its\n"
        "reserved slot (`hello-slot`'s `send_at`, the earliest the rate and window allow).\n\n"
        "| enrolling | received (expected) | contacts twice | arrival outside window / slots outside |"
        " max arrivals / calendar minute (reserved) | throughput | T → last arrival | lateness p50 / p99 / max |\n"
        "|---|---|---|---|---|---|---|---|\n"
        f"| {r['enroll_s']:.1f} s ({r['n'] / r['enroll_s']:,.0f}/s) | {r['received']:,} ({r['expected']:,}) |"
        f" {r['twice']} | {r['outside_window']} / {r['slots_outside']} of {r['slots']:,} |"
        f" {r['arrived_max']:,} ({r['reserved_max']:,}) |"
        f" {r['received'] / max(r['span_s'], 1e-9) * 60:,.0f}/min over {r['minutes']} minutes |"
        f" {r['from_due_s'] / 60:.1f} min | {r['p50']:.2f} s / {r['p99']:.2f} s / {r['max']:.2f} s |\n\n"
        f"* of it, the tick's resuming of the waiting slot (resumed at - send_at) p50 / p99:"
        f" {r['resume_p50']:.2f} s / {r['resume_p99']:.2f} s; the rest is the action queue, the runner and SMTP\n"
        f"* {r['runners']} runner process(es), {r['cpu_ms']:.1f} ms of runner CPU per message"
    )
    record("Campaign sends due at once", command, body)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100_000, help="enrollments")
    parser.add_argument("--mode", choices=["realtime", "engine"], default="realtime")
    # two: one runner sent ~40 emails/s here (its CPU per action), below the 100/s the rate allows
    parser.add_argument("--runners", type=int, default=2, help="runner processes (realtime mode)")
    args = parser.parse_args()
    with temporary_database() as url:
        r = run_realtime(url, args.n, args.runners) if args.mode == "realtime" else run_engine(url, args.n)
    print(r)
    command = ".venv/bin/python -m bench.campaign_due" + (f" --n {args.n}" if args.n != 100_000 else "")
    if args.mode == "engine":
        report_engine(r, command + " --mode engine")
        failed = r["outside"] or (r["max_per_minute"] or 0) > RATE or r["slots"] != r["n"]
    else:
        report_realtime(r, command)
        failed = (
            r["received"] != r["expected"] or r["twice"] or r["outside_window"] or r["slots_outside"]
            or (r["reserved_max"] or 0) > RATE or r["slots"] != r["n"]
        )  # fmt: skip
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
