"""Connections for the runner's HTTP client: opened to a checked address (TLS with the URL's
host name as server name), kept alive per destination, dropped when the server closed them.

The protocol on a connection is `http.py`'s and `http_response.py`'s (llhttp); here is only what a socket needs: every
operation bounded by the exchange's deadline, and a pool that hands an idle connection only
to a request for the same destination.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from conveyor.netguard import Target

Destination = tuple[str, str, str, int]  # (scheme, Host header, checked address, port)

_READ_SIZE = 64 * 1024


def time_left(deadline: float) -> float:
    """Seconds until `deadline` (time.monotonic()); TimeoutError once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the action's timeout has passed")
    return left


class HTTPConnection:
    """One TCP connection (TLS for https) to a checked address.

    Every socket operation is given only the time left before the exchange's deadline, so
    a response that trickles in (headers included) cannot hold an action past its timeout.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock: socket.socket | None = sock

    @classmethod
    def open(cls, tls: ssl.SSLContext, target: Target, deadline: float) -> HTTPConnection:
        """Connect to `target.address` (never resolved again); for https, the TLS server name
        (SNI and certificate check) is the URL's host name."""
        sock = socket.create_connection((target.address, target.port), timeout=time_left(deadline))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if target.scheme == "https":
                sock.settimeout(time_left(deadline))
                sock = tls.wrap_socket(sock, server_hostname=target.host)
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    def _live(self, deadline: float) -> socket.socket:
        if self.sock is None:
            raise ConnectionResetError("the connection is closed")
        self.sock.settimeout(time_left(deadline))
        return self.sock

    def send(self, data: bytes, deadline: float) -> None:
        self._live(deadline).sendall(data)

    def recv(self, deadline: float) -> bytes:
        """The next bytes received (at most 64 KiB); b"" at the end of the stream."""
        return self._live(deadline).recv(_READ_SIZE)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def closed_while_idle(self) -> bool:
        """True when an idle connection's socket is readable: the server closed it (EOF) or
        broke the protocol (bytes nobody asked for). Either way it must not carry another request."""
        if self.sock is None:
            return True
        poller = select.poll()  # not select.select: a runner may hold file descriptors above 1024
        try:
            poller.register(self.sock, select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True


@dataclass
class HTTPPool:
    """Kept-alive HTTP connections and the one TLS context of a runner.

    Idle connections are kept per destination: (scheme, Host header, checked address,
    port). A kept-alive connection is therefore only ever reused for the same host name at
    the same checked address: the TLS server name and certificate check it was opened with
    are the ones the next request needs, and DNS pinning holds (every request is still
    resolved and checked; a different answer is a different destination). At most
    `max_idle_per_destination` idle connections are kept per destination, each for at most
    `keepalive_expiry_s`; beyond `max_destinations` the least recently used destination's
    connections are closed. The lock is held only to pop or append: connecting, sending,
    reading and closing happen outside it. No cookies are kept anywhere (a cookie one
    tenant's endpoint sets must never be sent with another action).
    """

    max_destinations: int = 128
    max_idle_per_destination: int = 20
    keepalive_expiry_s: float = 5.0
    _idle: OrderedDict[Destination, list[tuple[float, HTTPConnection]]] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _tls: dict[str, ssl.SSLContext] = field(default_factory=dict)
    _closed: bool = False

    def tls_context(self, alpn: str | None = "http/1.1") -> ssl.SSLContext:
        """One certificate-verifying TLS context per application protocol (https: ALPN
        http/1.1; SMTP: none) for every connection, made on first use: loading the system's
        CA certificates costs ~30 ms of CPU, more than the rest of an email's send."""
        key = alpn or ""
        context = self._tls.get(key)
        if context is None:
            context = ssl.create_default_context()
            if alpn:
                context.set_alpn_protocols([alpn])
            with self._lock:
                context = self._tls.setdefault(key, context)
        return context

    def take_connection(self, destination: Destination) -> HTTPConnection | None:
        """An idle kept-alive connection to `destination` (the most recently used), or None."""
        stale: list[HTTPConnection] = []
        connection = None
        with self._lock:
            idle = self._idle.get(destination)
            if idle is not None:
                self._idle.move_to_end(destination)
                if idle:
                    expires_at, connection = idle.pop()
                    if expires_at <= time.monotonic():  # the newest has expired: so have the others
                        stale = [connection, *(c for _, c in idle)]
                        idle.clear()
                        connection = None
        for old in stale:
            old.close()
        if connection is not None and connection.closed_while_idle():
            connection.close()
            return None
        return connection

    def put_connection(self, destination: Destination, connection: HTTPConnection) -> None:
        """Keep `connection` (its last response read completely, nothing received beyond it)
        for the next request to `destination`."""
        evicted: list[tuple[float, HTTPConnection]] = []
        kept = False
        now = time.monotonic()
        with self._lock:
            if not self._closed:
                idle = self._idle.get(destination)
                if idle is None:
                    idle = self._idle[destination] = []
                    if len(self._idle) > self.max_destinations:
                        _, evicted = self._idle.popitem(last=False)
                else:
                    self._idle.move_to_end(destination)
                    while idle and idle[0][0] <= now:  # the oldest first
                        evicted.append(idle.pop(0))
                if len(idle) < self.max_idle_per_destination:
                    idle.append((now + self.keepalive_expiry_s, connection))
                    kept = True
        for _, old in evicted:
            old.close()
        if not kept:
            connection.close()

    def close(self) -> None:
        """Close every idle connection; connections put back afterwards are closed at once."""
        with self._lock:
            self._closed = True
            idle, self._idle = list(self._idle.values()), OrderedDict()
        for connections in idle:
            for _, connection in connections:
                connection.close()
