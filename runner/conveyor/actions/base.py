"""What every action gets and returns, and how a failure is classified.

An action is one function `(ActionRequest, Environment) -> dict` (its output). It
raises `ActionError` to fail: `retryable` says whether trying again may succeed
(timeouts, connection errors, 5xx, 408, 429) or not (other 4xx, invalid input).
The runner only reports that classification; SQL decides whether and when to retry.
"""

from __future__ import annotations

import select
import ssl
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conveyor.connections import Connection
from conveyor.netguard import NetworkPolicy

if TYPE_CHECKING:
    from conveyor.actions.http import HTTPConnection


@dataclass(frozen=True)
class ActionRequest:
    action: str
    input: dict[str, Any]
    idempotency_key: str
    timeout_s: float
    connection: Connection | None = None
    tenant_id: str = ""
    execution_id: int | None = None
    step_id: str = ""
    attempt: int = 1

    def require_connection(self, *kinds: str) -> Connection:
        if self.connection is None:
            raise InvalidInput(f"{self.action} needs a connection of kind {' or '.join(kinds)}")
        if self.connection.kind not in kinds:
            raise InvalidInput(
                f"{self.action} needs a connection of kind {' or '.join(kinds)}; "
                f"connection {self.connection.name!r} is a {self.connection.kind}"
            )
        return self.connection


Destination = tuple[str, str, str, int]  # (scheme, Host header, checked address, port)


@dataclass
class Environment:
    """What actions share in one runner: the network policy and kept-alive HTTP connections.

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

    policy: NetworkPolicy
    max_destinations: int = 128
    max_idle_per_destination: int = 20
    keepalive_expiry_s: float = 5.0
    _idle: OrderedDict[Destination, list[tuple[float, HTTPConnection]]] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _tls: ssl.SSLContext | None = None
    _closed: bool = False

    @classmethod
    def create(cls, policy: NetworkPolicy) -> Environment:
        return cls(policy=policy)

    def tls_context(self) -> ssl.SSLContext:
        """One certificate-verifying TLS context for every https connection (made on first use)."""
        context = self._tls
        if context is None:
            context = ssl.create_default_context()
            context.set_alpn_protocols(["http/1.1"])
            with self._lock:
                if self._tls is None:
                    self._tls = context
                context = self._tls
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
        if connection is not None and _has_closed(connection):
            connection.close()  # the server closed it while it was idle (or sent something unasked)
            return None
        return connection

    def put_connection(self, destination: Destination, connection: HTTPConnection) -> None:
        """Keep `connection` (its last response read completely) for the next request to `destination`."""
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
        with self._lock:
            self._closed = True
            idle, self._idle = list(self._idle.values()), OrderedDict()
        for connections in idle:
            for _, connection in connections:
                connection.close()


def _has_closed(connection: HTTPConnection) -> bool:
    """True when an idle connection's socket is readable: the server closed it (EOF) or broke
    the protocol (bytes nobody asked for). Either way it must not carry another request."""
    sock = connection.sock
    if sock is None or not connection.idle:
        return True
    poller = select.poll()  # not select.select: a runner may hold file descriptors above 1024
    try:
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


class ActionError(Exception):
    """A failed action. `output` (e.g. the HTTP response) is kept for the step's record."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        kind: str,
        retry_after_s: float | None = None,
        output: dict[str, Any] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.kind = kind
        self.retry_after_s = retry_after_s
        self.output = output
        self.details = details or {}

    def as_error(self) -> dict[str, Any]:
        return {"message": self.message, "type": self.kind, **self.details}


class InvalidInput(ActionError):
    """The step's input cannot be performed as given: permanent."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message, retryable=False, kind="invalid_input", details=details)


@dataclass
class Outcome:
    ok: bool
    output: dict[str, Any] | None
    retryable: bool = False
    retry_after_s: float | None = None
    error: dict[str, Any] | None = field(default=None)


def text_field(data: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = data.get(name)
    if value is None or value == "":
        if required:
            raise InvalidInput(f"input.{name} is required")
        return None
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise InvalidInput(f"input.{name} must be a string")
    return str(value)


def string_map(data: dict[str, Any], name: str) -> dict[str, str]:
    value = data.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"input.{name} must be an object of strings")
    result = {}
    for key, item in value.items():
        if isinstance(item, dict | list) or item is None:
            raise InvalidInput(f"input.{name}.{key} must be a string")
        text = item if isinstance(item, str) else str(item).lower() if isinstance(item, bool) else str(item)
        if "\r" in key or "\n" in key or "\r" in text or "\n" in text:
            raise InvalidInput(f"input.{name}.{key} must not contain line breaks")
        result[str(key)] = text
    return result
