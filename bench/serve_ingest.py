"""Webhook ingest through `conveyor serve`: requests per second and server CPU per request,
this checkout against a git revision's server (default `main`), same database, same run.

Each version runs as its own `conveyor serve` process (the baseline's `runner/` from
`git archive`, on this virtualenv) on one migrated database. Clients are threads on raw
keep-alive sockets sending signed deliveries prepared beforehand (each body is unique, as
a replayed signature is refused), so the client costs little CPU next to the server's. The
two versions alternate in rounds; the table gives the median round of each.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg.types.json import Jsonb

from bench.harness import _free_port, process_cpu_s, record, temporary_database

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = {
    "slug": "form-submitted",
    "name": "Form submitted",
    "trigger": {"webhook": {}},
    "steps": [{"id": "keep", "set": {"email": "{{trigger.payload.body.email}}"}}],
}


def baseline_runner(revision: str, into: Path) -> Path:
    """The revision's `runner/` directory, unpacked under `into`."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", revision, "runner"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    tar_path = into / "runner.tar"
    tar_path.write_bytes(archive)
    with tarfile.open(tar_path) as tar:
        tar.extractall(into, filter="data")
    return into / "runner"


@contextmanager
def serve_process(url: str, runner_dir: Path, clients: int) -> Iterator[tuple[int, int]]:
    """(port, pid) of a `conveyor serve` whose code is runner_dir."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(runner_dir), "CONVEYOR_LOG_LEVEL": "WARNING"}
    command = [sys.executable, "-m", "conveyor.cli", "serve", "--database-url", url, "--port", str(port)]
    command += ["--pool-size", str(min(clients, 8)), "--log-level", "WARNING"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if b" 200 " in sock.recv(1024):
                        break
            except OSError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.1)
        yield port, process.pid
    finally:
        process.terminate()
        process.wait(30)


def deliveries(path: str, secret: str, count: int, tag: str) -> list[bytes]:
    requests = []
    stamp = str(int(time.time()))
    for i in range(count):
        body = json.dumps({"email": f"{tag}-{i}@example.com"}).encode()
        digest = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        requests.append(
            f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"X-Conveyor-Signature: t={stamp},v1={digest}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
    return requests


def read_answer(sock: socket.socket, pending: bytearray) -> int:
    """One answer's status from a keep-alive socket (its body has a Content-Length)."""
    while b"\r\n\r\n" not in pending:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        pending += chunk
    head, _, _ = bytes(pending).partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    total = len(head) + 4 + length
    while len(pending) < total:
        pending += sock.recv(65536)
    del pending[:total]
    return int(head.split(b" ", 2)[1])


def load(port: int, pid: int, per_client: list[list[bytes]]) -> tuple[float, float]:
    """(requests per second, server CPU µs per request) for all the prepared requests."""
    statuses: list[int] = []
    lock = threading.Lock()
    start_line = threading.Barrier(len(per_client) + 1)

    def client(requests: list[bytes]) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            pending = bytearray()
            start_line.wait()
            got: list[int] = []
            for raw in requests:
                sock.sendall(raw)
                got.append(read_answer(sock, pending))
        with lock:
            statuses.extend(got)

    threads = [threading.Thread(target=client, args=(requests,)) for requests in per_client]
    for thread in threads:
        thread.start()
    cpu_before = process_cpu_s(pid)
    start_line.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    cpu = process_cpu_s(pid) - cpu_before
    count = sum(len(r) for r in per_client)
    assert statuses.count(202) == count, f"not all accepted: {sorted(set(statuses))}"
    return count / elapsed, cpu / count * 1e6


Results = dict[str, list[tuple[float, float]]]


def measure(url: str, baseline: str, clients: int, requests: int, rounds: int) -> Results:
    """(requests/s, CPU µs per request) of each round of each version, on a migrated database."""
    per = requests // clients
    results: Results = {"base": [], "new": []}
    with tempfile.TemporaryDirectory() as tmp, psycopg.connect(url, autocommit=True) as conn:
        runners = {"base": baseline_runner(baseline, Path(tmp)), "new": ROOT / "runner"}
        conn.execute("select conveyor.create_tenant('bench', 'Bench')")
        conn.execute("select conveyor.publish('bench', %s)", (Jsonb(WORKFLOW),))
        row = conn.execute("select path, secret from conveyor.webhook_endpoint('bench', 'form-submitted')")
        path, secret = row.fetchone() or ("", "")
        for n in range(rounds + 1):  # round 0 warms each server and the database up
            for version in ("base", "new") if n % 2 else ("new", "base"):
                with serve_process(url, runners[version], clients) as (port, pid):
                    batches = [deliveries(path, secret, per, f"{version}{n}c{c}") for c in range(clients)]
                    measured = load(port, pid, batches)
                if n:
                    results[version].append(measured)
                print(
                    f"round {n} {version}: {measured[0]:.0f} req/s, {measured[1]:.0f} µs CPU/request",
                    flush=True,
                )
                conn.execute(
                    "vacuum analyze conveyor.events, conveyor.executions, conveyor.webhook_signatures"
                )
    return results


def report(results: Results, baseline: str, clients: int, requests: int, rounds: int) -> str:
    base_rps = statistics.median(r for r, _ in results["base"])
    new_rps = statistics.median(r for r, _ in results["new"])
    base_cpu = statistics.median(c for _, c in results["base"])
    new_cpu = statistics.median(c for _, c in results["new"])
    return "\n".join(
        [
            f"Signed webhook deliveries (each starts a one-step workflow), {clients} keep-alive clients,"
            f" {requests // clients * clients} requests a round, {rounds} rounds per version interleaved,"
            f" medians; baseline `{baseline}`.",
            "",
            "| server | requests/s | server CPU per request |",
            "|---|---|---|",
            f"| baseline (`{baseline}`) | {base_rps:.0f} | {base_cpu:.0f} µs |",
            f"| this checkout | {new_rps:.0f} | {new_cpu:.0f} µs |",
            f"| ratio new / baseline | {new_rps / base_rps:.2f} | {new_cpu / base_cpu:.2f} |",
            "",
            "Requests per second are bounded by the database (the server uses a fraction of a core"
            " either way) and vary by round on shared cores; CPU per request is the steadier figure.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline", default="main", help="git revision of the baseline server")
    parser.add_argument("--clients", type=int, default=16, help="concurrent keep-alive connections")
    parser.add_argument("--requests", type=int, default=2000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per version")
    parser.add_argument("--record", action="store_true", help="write the results to bench/RESULTS.md")
    args = parser.parse_args()
    with temporary_database() as url:
        results = measure(url, args.baseline, args.clients, args.requests, args.rounds)
    body = report(results, args.baseline, args.clients, args.requests, args.rounds)
    print(body)
    if args.record:
        record("Webhook ingest through conveyor serve", "make bench-serve", body)


if __name__ == "__main__":
    main()
