"""Capture overhead: inserts into a watched platform table vs the same table unwatched.

    .venv/bin/python bench/capture_overhead.py [--transactions 2000] [--bulk-rows 10000] [--rounds 7]

Starts a temporary PostgreSQL cluster (Conveyor's embedded-cluster code, as the tests
do), migrates it, and creates two identical platform tables: `bench.plain_contacts` and
`bench.watched_contacts` (watched with conveyor.watch). Then it measures, interleaving
the two tables round by round so machine drift hits both alike:

  (a) single-row transactions: one INSERT + COMMIT per row, N transactions, with the
      server's default durable commit and again with synchronous_commit = off (which
      removes the WAL flush wait and so exposes the trigger's CPU cost);
  (b) bulk statements: one INSERT of 10,000 rows per statement (and transaction).

It prints the ratios watched / plain (targets: (a) <= 1.3x, (b) <= 1.5x) and rewrites
the "Capture overhead" section of bench/RESULTS.md with them, the command and the
machine (nproc, RAM, PostgreSQL version).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from conveyor.cluster import Cluster
from conveyor.migrate import migrate

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## Capture overhead"

TABLE = """
create table bench.{name} (
  id bigint primary key,
  tenant_id text not null,
  email text not null,
  full_name text not null,
  status text not null default 'open',
  score integer,
  created_at timestamptz not null default now()
);
create index {name}_tenant_email_idx on bench.{name} (tenant_id, email);
"""

ROW = "(%s, 'acme', 'contact' || %s || '@example.test', 'Contact ' || %s, 'open', %s)"
BULK = """
insert into bench.{name} (id, tenant_id, email, full_name, status, score)
select g, case when g % 2 = 0 then 'acme' else 'globex' end, 'contact' || g || '@example.test',
       'Contact ' || g, 'open', g % 100
from generate_series(%s::bigint, %s::bigint - 1) as g
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reset(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    conn.execute("truncate bench.plain_contacts, bench.watched_contacts")
    conn.execute("truncate conveyor.events cascade")
    conn.execute("vacuum analyze bench.plain_contacts, bench.watched_contacts, conveyor.events")
    conn.execute("checkpoint")


def single_row(conn: psycopg.Connection[tuple[object, ...]], table: str, start: int, count: int) -> float:
    statement = f"insert into bench.{table} (id, tenant_id, email, full_name, status, score) values {ROW}"
    began = time.perf_counter()
    for i in range(start, start + count):
        conn.execute(statement, (i, i, i, i % 100), prepare=True)
    return time.perf_counter() - began


def bulk(conn: psycopg.Connection[tuple[object, ...]], table: str, start: int, rows: int) -> float:
    statement = BULK.format(name=table)
    began = time.perf_counter()
    conn.execute(statement, (start, start + rows))
    return time.perf_counter() - began


def sessions(url: str, synchronous_commit: str) -> dict[str, psycopg.Connection[tuple[object, ...]]]:
    """One warmed-up autocommit session per table, as a platform's connection pool has."""
    found: dict[str, psycopg.Connection[tuple[object, ...]]] = {}
    for table in ("plain_contacts", "watched_contacts"):
        conn = psycopg.connect(url, autocommit=True)
        conn.execute(f"set synchronous_commit = {synchronous_commit}")
        # Warm-up: compile the capture trigger and cache the plans (the rows are removed).
        single_row(conn, table, -10, 10)
        bulk(conn, table, -1000, 10)
        found[table] = conn
    return found


def measure_rounds(rounds: int, run: Callable[[str, int], float]) -> tuple[list[float], list[float]]:
    """Per round: both tables once, the order alternating between rounds."""
    plain: list[float] = []
    watched: list[float] = []
    for r in range(rounds):
        order = (
            ["plain_contacts", "watched_contacts"] if r % 2 == 0 else ["watched_contacts", "plain_contacts"]
        )
        for table in order:
            elapsed = run(table, r)
            (plain if table == "plain_contacts" else watched).append(elapsed)
    return plain, watched


def machine() -> str:
    mem_kb = 0
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return f"{os.cpu_count()} CPUs (nproc), {mem_kb / 1024 / 1024:.1f} GiB RAM, {platform.platform()}"


def write_results(section: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nLatest results of `bench/`.\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text.rstrip("\n") + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--transactions", type=int, default=2000, help="single-row transactions per table")
    parser.add_argument("--bulk-rows", type=int, default=10_000, help="rows per bulk insert statement")
    parser.add_argument("--rounds", type=int, default=7, help="measurement rounds (interleaved)")
    parser.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    root.chmod(0o755)
    cluster = Cluster(root=root / "pg", port=free_port(), dbname="conveyor")
    try:
        cluster.start()
        url = cluster.url("conveyor")
        migrate(url)
        with psycopg.connect(url, autocommit=True) as conn:
            version_row = conn.execute("show server_version").fetchone()
            server_version = str(version_row[0]) if version_row else "?"
            conn.execute(
                "select conveyor.create_tenant('acme', 'Acme'), conveyor.create_tenant('globex', 'Globex')"
            )
            conn.execute("create schema bench")
            for name in ("plain_contacts", "watched_contacts"):
                conn.execute(TABLE.format(name=name))
            conn.execute("select conveyor.watch('bench.watched_contacts', 'crm', 'contact')")

            results: dict[str, tuple[float, float, float]] = {}
            per_round = max(1, args.transactions // args.rounds)
            for mode in ("on", "off"):
                live = sessions(url, mode)
                reset(conn)
                plain, watched = measure_rounds(
                    args.rounds,
                    lambda table, r, live=live: single_row(live[table], table, r * per_round, per_round),
                )
                results[f"single-{mode}"] = (sum(plain), sum(watched), sum(watched) / sum(plain))
                captured = conn.execute("select count(*) from conveyor.events").fetchone()
                assert captured == (per_round * args.rounds,), captured
                if mode == "on":
                    for session in live.values():
                        session.close()

            reset(conn)
            plain, watched = measure_rounds(
                args.rounds, lambda table, r: bulk(live[table], table, r * args.bulk_rows, args.bulk_rows)
            )
            for session in live.values():
                session.close()
            results["bulk"] = (
                statistics.median(plain),
                statistics.median(watched),
                statistics.median(watched) / statistics.median(plain),
            )
            captured = conn.execute("select count(*) from conveyor.events").fetchone()
            assert captured == (args.bulk_rows * args.rounds,), captured
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)

    transactions = per_round * args.rounds
    lines = [
        f"(a) {transactions} single-row transactions, durable commit (synchronous_commit = on): "
        f"plain {results['single-on'][0]:.3f}s, watched {results['single-on'][1]:.3f}s, "
        f"ratio {results['single-on'][2]:.2f}x (target <= 1.3x)",
        f"(a') {transactions} single-row transactions, synchronous_commit = off: "
        f"plain {results['single-off'][0]:.3f}s, watched {results['single-off'][1]:.3f}s, "
        f"ratio {results['single-off'][2]:.2f}x (target <= 1.3x)",
        f"(b) one {args.bulk_rows}-row insert statement, median of {args.rounds}: "
        f"plain {results['bulk'][0] * 1000:.1f}ms, watched {results['bulk'][1] * 1000:.1f}ms, "
        f"ratio {results['bulk'][2]:.2f}x (target <= 1.5x)",
    ]
    for line in lines:
        print(line)

    if not args.no_write:
        command = " ".join(["bench/capture_overhead.py", *sys.argv[1:]])
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        section = "\n".join(
            [
                SECTION,
                "",
                f"Command: `.venv/bin/python {command}` (or `make bench-capture`), run {stamp}.",
                f"Machine: {machine()}; PostgreSQL {server_version} (temporary cluster, default settings).",
                "",
                "Platform table: 7 columns (bigint primary key, tenant_id, email, full_name, status, score,",
                "created_at) with one secondary index (tenant_id, email); the watched copy has Conveyor's",
                "statement-level capture triggers. Ratios are watched / plain, measured in the same run,",
                "the two tables interleaved round by round.",
                "",
                "| case | plain | watched | ratio | target |",
                "|---|---|---|---|---|",
                f"| (a) {transactions} single-row transactions, durable commit | {results['single-on'][0]:.3f} s "
                f"| {results['single-on'][1]:.3f} s | {results['single-on'][2]:.2f}x | <= 1.3x |",
                f"| (a') the same with synchronous_commit = off | {results['single-off'][0]:.3f} s "
                f"| {results['single-off'][1]:.3f} s | {results['single-off'][2]:.2f}x | <= 1.3x |",
                f"| (b) one {args.bulk_rows}-row insert (median of {args.rounds}) | {results['bulk'][0] * 1000:.1f} ms "
                f"| {results['bulk'][1] * 1000:.1f} ms | {results['bulk'][2]:.2f}x | <= 1.5x |",
                "",
            ]
        )
        write_results(section)
        print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
