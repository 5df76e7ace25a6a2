"""The runner's HTTP client: CPU time per request, this checkout's client vs an earlier one's.

    .venv/bin/python -m bench.http_client_cpu [--requests 5000] [--blocks 10] [--baseline REV]

Small POSTs (a JSON body, the headers webhook.send sets) through `http.send` to a local
keep-alive server in another process, from 1 thread and from 16, with the CPU time of this
process (`time.process_time`) divided by the number of requests: the server's work is not
counted, the client's parsing, pooling and system calls are. The baseline is the client of
git revision `--baseline` (default: the last hand-parsed one, before h11), loaded from git
into this process beside the current one. The requests go in blocks that alternate between
the two clients; the lowest block counts (the least disturbed by the rest of the machine),
the median block is shown beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import product
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.harness import record

ROOT = Path(__file__).resolve().parent.parent
HAND_PARSED = "7b0203d"  # the last revision whose client parsed HTTP by hand
_REPLY = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nServer: sink\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 GMT\r\nContent-Length: 11\r\n\r\n"
    b'{"ok":true}'
)
_HEADERS = {
    "Content-Type": "application/json",
    "Idempotency-Key": "e:12345:step-1:1",
    "X-Conveyor-Signature": "t=1700000000,v1=" + "ab" * 32,
}
_BODY = b'{"order":{"id":12345,"total":"19.90","items":3},"event":"order.paid"}'


class _Sink(asyncio.Protocol):
    """Answers every request on a kept-alive connection with `_REPLY`."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            length = 0
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            self.transport.write(_REPLY)


def serve() -> None:
    """The server process: prints its port, serves until its standard input closes."""

    async def run() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Sink, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await loop.run_in_executor(None, sys.stdin.read)
        server.close()

    asyncio.run(run())


def load_revision(revision: str) -> tuple[ModuleType, Any]:
    """The http module and Environment class of `revision`, imported under another package
    name (the rest of `conveyor` is this checkout's: netguard, connections)."""
    package = "_http_" + "".join(c if c.isalnum() else "_" for c in revision)
    folder = Path(tempfile.mkdtemp(prefix="http-client-cpu-")) / package
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    modules = ("base", "http", "http_pool", "http_response")
    for name in modules:
        shown = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{revision}:runner/conveyor/actions/{name}.py"],
            capture_output=True,
            text=True,
        )
        if shown.returncode != 0:
            continue  # http_pool.py exists only from the h11 client on, http_response.py from llhttp
        text = shown.stdout
        for module in modules:
            text = text.replace(f"conveyor.actions.{module}", f"{package}.{module}")
        (folder / f"{name}.py").write_text(text)
    sys.path.insert(0, str(folder.parent))
    return importlib.import_module(f"{package}.http"), importlib.import_module(f"{package}.base").Environment


def cpu_per_request(
    http: ModuleType, env: Any, url: str, requests: int, pool: ThreadPoolExecutor | None
) -> float:
    """CPU seconds of this process per request: `requests` POSTs from this thread or from `pool`'s."""

    def post(_: int) -> None:
        http.send(env, "POST", url, timeout_s=10.0, headers=dict(_HEADERS), content=_BODY)

    started = time.process_time()
    if pool is None:
        for i in range(requests):
            post(i)
    else:
        list(pool.map(post, range(requests)))
    return (time.process_time() - started) / requests


def measure(
    clients: dict[str, tuple[ModuleType, Any]], url: str, requests: int, blocks: int
) -> dict[tuple[str, int], list[float]]:
    """CPU per request of each block, by (client, threads)."""
    samples: dict[tuple[str, int], list[float]] = {key: [] for key in product(clients, (1, 16))}
    size = max(1, requests // blocks)
    for threads in (1, 16):
        with ThreadPoolExecutor(threads) as executor:
            pool = executor if threads > 1 else None
            for number in range(blocks):
                # alternate which client goes first: neither always runs in the other's wake
                for name in list(clients) if number % 2 == 0 else reversed(list(clients)):
                    module, env = clients[name]
                    if number == 0:  # open the kept-alive connections first
                        cpu_per_request(module, env, url, threads * 4, pool)
                    samples[(name, threads)].append(cpu_per_request(module, env, url, size, pool))
                    print(
                        f"block {number + 1}: {name}, {threads:2} thread(s):"
                        f" {samples[(name, threads)][-1] * 1e6:6.1f} us/request"
                    )
    return samples


def report(samples: dict[tuple[str, int], list[float]], names: list[str], requests: int, blocks: int) -> str:
    lowest = {key: min(values) for key, values in samples.items()}
    median = {key: statistics.median(values) for key, values in samples.items()}
    lines = [
        f"{requests:,} POSTs per client and thread count, in {blocks} blocks alternating between the"
        " clients; CPU time of the client's process per request, lowest block (median block):",
        "",
        "| client | 1 thread | 16 threads |",
        "|---|---|---|",
    ]
    for name in names:
        cells = [f"{lowest[(name, t)] * 1e6:.1f} us ({median[(name, t)] * 1e6:.1f} us)" for t in (1, 16)]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    new, old = names[1], names[0]
    lines += [
        "",
        f"this checkout / baseline: {lowest[(new, 1)] / lowest[(old, 1)]:.2f} (1 thread),"
        f" {lowest[(new, 16)] / lowest[(old, 16)]:.2f} (16 threads); median blocks:"
        f" {median[(new, 1)] / median[(old, 1)]:.2f}, {median[(new, 16)] / median[(old, 16)]:.2f}",
    ]
    return "\n".join(lines)


def run(requests: int, blocks: int, baseline: str) -> tuple[dict[tuple[str, int], list[float]], list[str]]:
    """Both clients against one sink process: the samples by (client, threads), the clients' names."""
    from conveyor.actions import http
    from conveyor.actions.base import Environment
    from conveyor.netguard import NetworkPolicy

    old_http, old_environment = load_revision(baseline)
    policy = NetworkPolicy.parse("127.0.0.1/32")
    clients: dict[str, tuple[ModuleType, Any]] = {
        f"baseline ({baseline})": (old_http, old_environment.create(policy)),
        "this checkout": (http, Environment.create(policy)),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.http_client_cpu", "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert server.stdout is not None
        url = f"http://127.0.0.1:{int(server.stdout.readline())}/hook"
        return measure(clients, url, requests, blocks), list(clients)
    finally:
        for _, env in clients.values():
            env.close()
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--blocks", type=int, default=10, help="alternating blocks the requests go in")
    parser.add_argument("--baseline", default=HAND_PARSED, help="git revision of the baseline client")
    parser.add_argument("--no-record", action="store_true", help="print only; leave RESULTS.md")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    samples, names = run(args.requests, args.blocks, args.baseline)
    body = report(samples, names, args.requests, args.blocks)
    print("\n" + body)
    if not args.no_record:
        command = f"python -m bench.http_client_cpu --requests {args.requests} --blocks {args.blocks} --baseline {args.baseline}"
        record("HTTP client CPU per request", command, body)


if __name__ == "__main__":
    main()
