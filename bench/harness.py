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
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

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


class _ReceiverServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # the listen backlog: taken when the socket listens, so on the class


def receiver(latency_s: float) -> ThreadingHTTPServer:
    """A local endpoint answering every POST with 200 after `latency_s` (keep-alive, HTTP/1.1)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # headers and body leave in two writes; with Nagle on a kept-alive connection the
        # second waits for the client's delayed ACK (~40 ms)
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            time.sleep(latency_s)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    server = _ReceiverServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def best_of(runs: int, func: Callable[[], None]) -> float:
    """The fastest of `runs` timings of func(), in seconds (least disturbed by noise)."""
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        func()
        timings.append(time.perf_counter() - start)
    return min(timings)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (0 once it is gone), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    """Replace (or append) `## section` in bench/RESULTS.md with fresh results; with
    CONVEYOR_BENCH_NO_RECORD set (bench/ab_revisions.py sets it), leave it as it is."""
    if os.environ.get("CONVEYOR_BENCH_NO_RECORD"):
        print(f"(not recorded in {RESULTS.name}: CONVEYOR_BENCH_NO_RECORD is set)", flush=True)
        return
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    block = f"## {section}\n\n`{command}` — {stamp}, {machine()}\n\n{body.strip()}\n\n"
    pattern = re.compile(rf"^## {re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block
    RESULTS.write_text(text.rstrip() + "\n")
