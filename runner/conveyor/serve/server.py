"""`conveyor serve`'s lifecycle: the pool and the LISTEN hub around uvicorn, signals, a test thread.

On SIGTERM or SIGINT uvicorn stops accepting, closes idle connections, lets requests in
flight finish (at most `SHUTDOWN_GRACE_S`), then the app's lifespan closes the hub and the
pool; the command exits 0. A second SIGINT stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import uvicorn
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette

from conveyor.errors import ConveyorError
from conveyor.serve.app import make_app
from conveyor.serve.hub import ListenHub
from conveyor.serve.limits import Limits
from conveyor.serve.protocol import GuardedProtocol
from conveyor.serve.stream import CHANNEL as NOTIFICATION_CHANNEL
from conveyor.serve.stream import notification_key

log = logging.getLogger("conveyor.serve")

SHUTDOWN_GRACE_S = 10.0
# The channels the hub listens on: notifications (stream.py, keyed by tenant and user) and
# executions (for the console's live pages to come).
HUB_CHANNELS: tuple[str, ...] = ("conveyor_notifications", "conveyor_executions")


@dataclass(frozen=True)
class ServeSettings:
    database_url: str
    host: str = "127.0.0.1"
    port: int = 8080
    pool_size: int = 8
    limits: Limits = field(default_factory=Limits)
    token_secret: str | None = None
    hub_channels: tuple[str, ...] = HUB_CHANNELS


def build_app(settings: ServeSettings) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, asyncio.Event]]:
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            settings.database_url,
            min_size=1,
            max_size=settings.pool_size,
            kwargs={"autocommit": True, "application_name": "conveyor-serve"},
            open=False,
        )
        # Not waiting: a server whose database is down starts, and /healthz says so.
        await pool.open(wait=False)
        keys = (
            {NOTIFICATION_CHANNEL: notification_key} if NOTIFICATION_CHANNEL in settings.hub_channels else {}
        )
        hub = ListenHub(settings.database_url, settings.hub_channels, keys=keys)
        await hub.start()
        app.state.pool, app.state.hub = pool, hub
        app.state.limits, app.state.token_secret = settings.limits, settings.token_secret
        # The streams' reads from the table take at most half the pool; the other routes keep the rest.
        app.state.catch_up_slots = asyncio.Semaphore(max(1, settings.pool_size // 2))
        # Set when the server starts shutting down (protocol.py): open streams end at once.
        app.state.stopping = stopping = asyncio.Event()
        try:
            yield {"stopping": stopping}
        finally:
            stopping.set()
            await hub.stop()
            await pool.close()

    return make_app(lifespan)


def raise_open_file_limit(wanted: int) -> None:
    """Each open connection is a file: raise the soft RLIMIT_NOFILE (up to the hard one) to fit.

    Debian's default soft limit is 1,024, fewer than --max-connections' default streams.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning(
            "the open-file limit is lower than --max-connections needs",
            extra={"limit": soft, "wanted": wanted},
        )


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises a caught signal once it has shut down, which would end the
        # process by the signal (status 143 or KeyboardInterrupt) after a clean stop.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self._stop) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def _stop(self, sig: int, _frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True


def make_server(settings: ServeSettings) -> _Server:
    config = uvicorn.Config(
        build_app(settings),
        host=settings.host,
        port=settings.port,
        http=GuardedProtocol.with_limits(settings.limits),
        ws="none",
        lifespan="on",
        loop="asyncio",
        log_config=None,
        server_header=False,
        # protocol.py's request deadline closes idle connections first; this is a backstop.
        timeout_keep_alive=int(settings.limits.request_timeout_s) + 1,
        timeout_graceful_shutdown=int(SHUTDOWN_GRACE_S),
        backlog=128,
    )
    return _Server(config)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def run(settings: ServeSettings, announce: Callable[[str], None] = print) -> None:
    """Serve until SIGTERM or SIGINT (the `conveyor serve` command)."""
    # uvicorn's own start-up lines repeat what the command prints; its warnings still show.
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    try:
        sock = bind(settings.host, settings.port)
    except OSError as exc:
        raise ConveyorError(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
        ) from None
    # Connections, the pool, the hub, and what the process has open besides.
    raise_open_file_limit(settings.limits.max_connections + settings.pool_size + 64)
    server = make_server(settings)
    announce(f"listening on http://{settings.host}:{settings.port}")
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        sock.close()


@dataclass
class Running:
    url: str
    server: _Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(SHUTDOWN_GRACE_S + 5)


@contextlib.contextmanager
def serve_in_thread(settings: ServeSettings) -> Iterator[Running]:
    """The server on a thread of this process (tests): port 0 takes a free one."""
    sock = bind(settings.host, settings.port)
    server = make_server(settings)
    thread = threading.Thread(
        target=lambda: asyncio.run(server.serve(sockets=[sock])), name="conveyor-serve", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("conveyor serve did not start")
        time.sleep(0.01)
    host, port = sock.getsockname()[:2]
    running = Running(f"http://{host}:{port}", server, thread)
    try:
        yield running
    finally:
        running.stop()
        sock.close()
