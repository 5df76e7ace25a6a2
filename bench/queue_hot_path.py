"""The queue's hot path, A/B: conveyor.read_actions and conveyor.write_back of this checkout
against those of a git revision (default `main`), in the same database and the same run.

    .venv/bin/python -m bench.queue_hot_path [--messages 10000] [--baseline main]

The baseline's queue files (sql/actions.sql, and sql/write_back.sql and dead_letters.sql
where it has them) are installed beside the current ones with every function they define
renamed (`conveyor.write_back` -> `conveyor.write_back_base`, ...), so both read
the same queue and write back into the same tables. Each round takes 100 queued actions
with one version and then 100 with the other (the order alternates), as a runner does:
read_actions(10) then write_back of the 10 ok results, one autocommit statement each. The
workflow is a webhook step then a `set` step, so each write-back runs its execution to
the end. Reported per version: the backend's CPU time per call (from
/proc/<pid>/schedstat: other load on a shared machine barely moves it), the mean over all
calls; the median client-side time per call; and new / base of each.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from bench.harness import record, temporary_database

ROOT = Path(__file__).resolve().parents[1]
# the baseline's files that hold the queue's functions (those it has)
QUEUE_FILES = ("sql/actions.sql", "sql/dead_letters.sql", "sql/write_back.sql")
BATCH = 10
ROUND = 100
WORKFLOW = {
    "slug": "hot",
    "name": "hot path",
    "trigger": {"event": "bench.hot.path"},
    "steps": [
        {"id": "hook", "action": "webhook.send", "with": {"url": "https://example.test/x", "body": {"n": 1}}},
        {"id": "after", "set": {"status": "{{steps.hook.output.status}}"}},
    ],
}


def baseline_sql(revision: str) -> str:
    """The baseline's queue files, every function they define renamed `<name>_base`."""
    texts = []
    for path in QUEUE_FILES:
        shown = subprocess.run(
            ["git", "show", f"{revision}:{path}"], cwd=ROOT, capture_output=True, text=True
        )
        if shown.returncode == 0:
            texts.append(shown.stdout)
    text = "\n".join(texts)
    for name in sorted(set(re.findall(r"create or replace function conveyor\.(\w+)\(", text))):
        text = re.sub(rf"\bconveyor\.{name}\(", f"conveyor.{name}_base(", text)
        # a function's OUT parameters are qualified by its name (write_back.msg_id)
        text = re.sub(rf"\b{name}\.(msg_id|step_run_id|outcome)\b", rf"{name}_base.\1", text)
    return re.sub(r"^drop function .*$", "", text, flags=re.M)


def queue(conn: psycopg.Connection[Any], count: int) -> None:
    conn.execute(
        "select conveyor.emit('bench', 'bench.hot.path', jsonb_build_object('n', n)) from generate_series(1, %s) as n",
        (count,),
    )
    while True:
        row = conn.execute("select conveyor.dispatch(1000)").fetchone()
        if not row or not row[0]:
            break


class Timings:
    """Wall and backend CPU seconds of each call of one function."""

    def __init__(self, pid: int) -> None:
        self.schedstat = Path(f"/proc/{pid}/schedstat")
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def cpu_s(self) -> float:
        return int(self.schedstat.read_text().split()[0]) / 1e9

    def call(self, conn: psycopg.Connection[Any], query: str, params: tuple[Any, ...]) -> list[Any]:
        cpu, start = self.cpu_s(), time.perf_counter()
        rows = conn.execute(query, params).fetchall()
        self.wall.append(time.perf_counter() - start)
        self.cpu.append(self.cpu_s() - cpu)
        return rows


def round_of(conn: psycopg.Connection[Any], suffix: str, reads: Timings, writes: Timings) -> None:
    for _ in range(ROUND // BATCH):
        rows = reads.call(
            conn, f"select msg_id, read_ct, message from conveyor.read_actions{suffix}(%s, 30, 30)", (BATCH,)
        )
        results = [
            {"msg_id": r[0], "step_run_id": r[2]["step_run_id"], "ok": True, "output": {"status": 200}}
            for r in rows
        ]
        writes.call(conn, f"select * from conveyor.write_back{suffix}(%s)", (Jsonb(results),))
        assert len(rows) == BATCH, "the queue ran dry"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=10_000, help="messages per version")
    parser.add_argument("--baseline", default="main", help="git revision of the baseline")
    parser.add_argument("--record", action="store_true", help="write the results to bench/RESULTS.md")
    args = parser.parse_args()
    rounds = max(1, args.messages // ROUND)
    with temporary_database() as url, psycopg.connect(url, autocommit=True) as conn:
        conn.execute(baseline_sql(args.baseline))
        conn.execute("select conveyor.create_tenant('bench', 'Bench')")
        conn.execute("select conveyor.publish('bench', %s)", (Jsonb(WORKFLOW),))
        queue(conn, 2 * rounds * ROUND + ROUND)
        row = conn.execute("select pg_backend_pid()").fetchone()
        assert row is not None
        pid = int(row[0])
        timings = {suffix: (Timings(pid), Timings(pid)) for suffix in ("", "_base")}
        round_of(conn, "", Timings(pid), Timings(pid))  # warm-up: plans, caches
        for n in range(rounds):
            for suffix in ("", "_base") if n % 2 else ("_base", ""):
                # the archived messages' dead rows at the head of the queue's index would
                # otherwise make every read slower than the one before, whichever version
                conn.execute("vacuum pgmq.q_conveyor_actions")
                round_of(conn, suffix, *timings[suffix])
    lines = [
        f"{rounds * ROUND} messages per version, batches of {BATCH}, baseline `{args.baseline}`"
        " (its queue functions, renamed), the two interleaved in rounds of 100 messages.",
        "",
        "| call | backend CPU per call: base / new / ratio | wall median: base / new / ratio |",
        "|---|---|---|",
    ]
    for index, call in enumerate(("read_actions", "write_back")):
        base, new = timings["_base"][index], timings[""][index]
        cpu = [statistics.fmean(t.cpu) * 1e6 for t in (base, new)]
        wall = [statistics.median(t.wall) * 1e3 for t in (base, new)]
        lines.append(
            f"| {call} | {cpu[0]:.0f} us / {cpu[1]:.0f} us / {cpu[1] / cpu[0]:.3f}"
            f" | {wall[0]:.3f} ms / {wall[1]:.3f} ms / {wall[1] / wall[0]:.3f} |"
        )
    print("\n".join(lines))
    if args.record:
        record(
            "Queue hot path (A/B)",
            f".venv/bin/python -m bench.queue_hot_path --messages {args.messages} --baseline {args.baseline} --record",
            "\n".join(lines),
        )


if __name__ == "__main__":
    main()
