"""What bench/e2e_peers.py measures with: the HTTP sink every system's workflow posts to
(its own process, asyncio, keep-alive; it notes each request's arrival), the phases
(a burst, a steady rate) and their latencies and throughput."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import signal
import statistics
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

# --- the sink ------------------------------------------------------------------------


class _SinkProtocol(asyncio.Protocol):
    """A minimal HTTP/1.1 server: notes (arrival wall clock, body) of every POST, answers 200.

    GET /_arrivals returns the noted arrivals as JSON and forgets them."""

    def __init__(self, arrivals: list[tuple[float, str]]) -> None:
        self.arrivals = arrivals
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.buffer += data
        while self.transport is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1").split("\r\n")
            length, close = 0, False
            for line in head[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "connection":
                    close = value.strip().lower() == "close"
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            path = head[0].split(" ")[1] if " " in head[0] else "/"
            if path.startswith("/_arrivals"):
                reply = json.dumps(self.arrivals).encode()
                self.arrivals.clear()
            else:
                self.arrivals.append((now, body.decode()))
                reply = b"ok"
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                % (len(reply), reply)
            )
            if close:
                self.transport.close()
                return


def _serve_sink(port_pipe: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    arrivals: list[tuple[float, str]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _SinkProtocol(arrivals), "127.0.0.1", 0, backlog=1024)
        port_pipe.send(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    asyncio.run(main())


@dataclass
class Sink:
    url: str

    def arrivals(self) -> list[tuple[float, dict[str, Any]]]:
        with urllib.request.urlopen(f"{self.url}/_arrivals", timeout=30) as response:
            raw = json.loads(response.read())
        return [(float(at), json.loads(body)) for at, body in raw]


@contextmanager
def sink() -> Iterator[Sink]:
    """The HTTP sink in its own process, so the producers' and pollers' GIL never delays it."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_serve_sink, args=(sender,), daemon=True)
    process.start()
    try:
        port = receiver.recv()
        yield Sink(f"http://127.0.0.1:{port}")
    finally:
        process.terminate()
        process.join(10)


# --- measuring -----------------------------------------------------------------------


@dataclass
class Phase:
    """One system's run of one phase: when each event committed and when it arrived."""

    committed: dict[int, float] = field(default_factory=dict)
    arrived: dict[int, float] = field(default_factory=dict)
    first_commit: float = 0.0
    last_completed: float = 0.0
    producer_s: float = 0.0
    worker_cpu_s: float = 0.0
    postgres_cpu_s: float = 0.0

    def latencies_ms(self) -> list[float]:
        return sorted(
            (self.arrived[seq] - self.committed[seq]) * 1000 for seq in self.committed if seq in self.arrived
        )

    def throughput(self) -> float:
        return len(self.committed) / max(1e-9, self.last_completed - self.first_commit)

    def summary(self) -> dict[str, float]:
        lat = self.latencies_ms()
        return {
            "events": len(self.committed),
            "arrived": len(lat),
            "throughput": self.throughput(),
            "p50": percentile(lat, 50),
            "p99": percentile(lat, 99),
            "max": lat[-1] if lat else float("nan"),
            "producer_s": self.producer_s,
            "offered_per_s": len(self.committed) / max(1e-9, self.producer_s),
            "worker_cpu_ms": self.worker_cpu_s * 1000 / max(1, len(self.committed)),
            "postgres_cpu_ms": self.postgres_cpu_s * 1000 / max(1, len(self.committed)),
            "elapsed_s": self.last_completed - self.first_commit,
        }


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=100, method="inclusive")[int(p) - 1]


def wait_until_done(count: Callable[[], tuple[int, int]], expected: int, timeout_s: float) -> float:
    """Poll (completed, failed) every 20 ms until `expected` completed; returns that wall clock."""
    deadline = time.monotonic() + timeout_s
    while True:
        done, failed = count()
        if done >= expected:
            return time.time()
        if failed:
            raise RuntimeError(f"{failed} workflows failed")
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {done} of {expected} workflows completed within {timeout_s:g} s")
        time.sleep(0.02)


def collect(phase: Phase, sink: Sink, name: str, label: str, expected: int) -> None:
    """Move the sink's arrivals for (system, phase) into `phase` (waiting briefly for stragglers)."""
    deadline = time.monotonic() + 10
    pending: list[tuple[float, dict[str, Any]]] = []
    while True:
        pending += sink.arrivals()
        for at, body in pending:
            if body.get("system") == name and body.get("phase") == label:
                seq = int(body["seq"])
                phase.arrived[seq] = min(at, phase.arrived.get(seq, at))
        pending = []
        if len(phase.arrived) >= expected or time.monotonic() > deadline:
            return
        time.sleep(0.1)


def steady(rate: float, seconds: float, produce: Callable[[int], None]) -> Phase:
    """Call produce(seq) `rate` times a second for `seconds`, on a fixed schedule.

    Eight producer threads, so that a system whose enqueue takes longer than 1/rate still
    gets the offered rate (each event's latency starts at its own commit)."""
    phase = Phase()
    total = int(rate * seconds)
    start = time.perf_counter() + 0.05

    def one(seq: int) -> None:
        produce(seq)
        phase.committed[seq] = time.time()

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = []
        for seq in range(total):
            delay = start + seq / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(one, seq))
        for future in futures:
            future.result()
    phase.first_commit = min(phase.committed.values())
    phase.producer_s = time.perf_counter() - start
    return phase
