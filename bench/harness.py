"""Shared benchmark plumbing: a throwaway migrated cluster, timing, and RESULTS.md updates.

Every benchmark prints ratios against a baseline measured in the same run, because
absolute times drift on shared machines.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from conveyor.cluster import Cluster
from conveyor.migrate import migrate

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def temporary_database() -> Iterator[str]:
    """A private cluster with a migrated `conveyor` database; removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    root.chmod(0o755)  # as root, the server's unprivileged user must reach it
    cluster = Cluster(root=root / "pg", port=_free_port())
    cluster.start()
    try:
        url = cluster.url()
        migrate(url)
        # pg_cron's once-a-minute safety net would race the measured work; benchmarks drive
        # the engine themselves.
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("select cron.unschedule(jobid) from cron.job")
        yield url
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def best_of(runs: int, func: Callable[[], None]) -> float:
    """The fastest of `runs` timings of func(), in seconds (least disturbed by noise)."""
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        func()
        timings.append(time.perf_counter() - start)
    return min(timings)


def machine() -> str:
    memory_kb = 0
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                memory_kb = int(line.split()[1])
    pg = subprocess.run(["psql", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return (
        f"{os.cpu_count()} cores, {memory_kb // 1024 // 1024} GiB RAM, {platform.machine()}, "
        f"Python {platform.python_version()}, {pg.replace('psql (PostgreSQL) ', 'PostgreSQL ')}"
    )


def record(section: str, command: str, body: str) -> None:
    """Replace (or append) `## section` in bench/RESULTS.md with fresh results."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    block = f"## {section}\n\n`{command}` — {stamp}, {machine()}\n\n{body.strip()}\n\n"
    pattern = re.compile(rf"^## {re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block
    RESULTS.write_text(text.rstrip() + "\n")
