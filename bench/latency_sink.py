"""A local HTTP sink in its own process that answers every POST after a fixed latency and
notes when each request arrived, with its body (bench/noisy_neighbour.py).

Its own process, so the benchmark's producers and probes (their GIL) never delay an
arrival; asyncio, HTTP/1.1 keep-alive. `GET /_arrivals` returns the arrivals noted so far
as JSON, `[[wall clock, body], ...]`, and forgets them."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import signal
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


async def _answer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, arrivals: list[Any], latency_s: float
) -> None:
    """HTTP/1.1 keep-alive: note (arrival wall clock, body) of each POST, answer 200 after
    `latency_s`; `GET /_arrivals` returns the noted arrivals as JSON and forgets them."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            arrived = time.time()
            request, *headers = head.decode("latin-1").split("\r\n")
            length = 0
            for line in headers:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            body = await reader.readexactly(length) if length else b""
            if request.startswith("GET /_arrivals"):
                reply = json.dumps(arrivals).encode()
                del arrivals[:]
            else:
                arrivals.append((arrived, body.decode()))
                await asyncio.sleep(latency_s)
                reply = b"ok"
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(reply), reply))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def _serve(port_pipe: Any, latency_s: float) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    arrivals: list[Any] = []

    async def main() -> None:
        server = await asyncio.start_server(
            lambda r, w: _answer(r, w, arrivals, latency_s), "127.0.0.1", 0, backlog=1024
        )
        port_pipe.send(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    asyncio.run(main())


@dataclass
class LatencySink:
    url: str

    def arrivals(self) -> list[tuple[float, dict[str, Any]]]:
        """The arrivals noted since the last call: (wall clock, the request's JSON body)."""
        with urllib.request.urlopen(f"{self.url}/_arrivals", timeout=60) as response:
            return [(float(at), json.loads(body)) for at, body in json.loads(response.read())]


@contextmanager
def latency_sink(latency_ms: float) -> Iterator[LatencySink]:
    context = multiprocessing.get_context("spawn")
    receiving, sending = context.Pipe(duplex=False)
    process = context.Process(target=_serve, args=(sending, latency_ms / 1000), daemon=True)
    process.start()
    try:
        yield LatencySink(f"http://127.0.0.1:{receiving.recv()}")
    finally:
        process.terminate()
        process.join(10)
