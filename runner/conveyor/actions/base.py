"""What every action gets and returns, and how a failure is classified.

An action is one function `(ActionRequest, Environment) -> dict` (its output). It
raises `ActionError` to fail: `retryable` says whether trying again may succeed
(timeouts, connection errors, 5xx, 408, 429) or not (other 4xx, invalid input).
The runner only reports that classification; SQL decides whether and when to retry.
"""

from __future__ import annotations

import http.cookiejar
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import httpx

from conveyor.connections import Connection
from conveyor.netguard import NetworkPolicy


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


_CLIENT_OPTIONS: dict[str, Any] = {
    "trust_env": False,
    "follow_redirects": False,
    "headers": {"User-Agent": "Conveyor"},
}


def _client() -> httpx.Client:
    # A cookie jar that keeps nothing: a cookie one tenant's endpoint sets must never be
    # sent with another action (the next request to that destination may be another tenant's).
    jar = http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return httpx.Client(cookies=jar, **_CLIENT_OPTIONS)


@dataclass
class Environment:
    """What actions share in one runner: the network policy and HTTP clients.

    `http` builds requests. Requests are sent through one keep-alive client per
    destination: (scheme, Host header, checked address, port). A kept-alive connection is
    therefore only ever reused for the same host name at the same checked address: the
    TLS server name and certificate check it was opened with are the ones the next request
    needs, and DNS pinning holds (every request is still resolved and checked; a different
    answer is a different destination, so a different client). The least recently used of
    more than `max_destinations` clients is closed.
    """

    policy: NetworkPolicy
    http: httpx.Client
    max_destinations: int = 128
    _clients: OrderedDict[tuple[str, str, str, int | None], httpx.Client] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(cls, policy: NetworkPolicy) -> Environment:
        return cls(policy=policy, http=_client())

    def client_for(self, request: httpx.Request) -> httpx.Client:
        """The keep-alive client for the destination `request` (from `pinned_request`) goes to."""
        key = (request.url.scheme, request.headers.get("Host", ""), request.url.host, request.url.port)
        evicted = None
        with self._lock:
            client = self._clients.get(key)
            if client is not None:
                self._clients.move_to_end(key)
                return client
            client = self._clients[key] = _client()
            if len(self._clients) > self.max_destinations:
                _, evicted = self._clients.popitem(last=False)
        if evicted is not None:
            evicted.close()
        return client

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), OrderedDict()
        for client in clients:
            client.close()
        self.http.close()


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
