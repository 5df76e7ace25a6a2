"""What every action gets and returns, and how a failure is classified.

An action is one function `(ActionRequest, Environment) -> dict` (its output). It
raises `ActionError` to fail: `retryable` says whether trying again may succeed
(timeouts, connection errors, 5xx, 408, 429) or not (other 4xx, invalid input).
The runner only reports that classification; SQL decides whether and when to retry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from conveyor.actions.http_pool import HTTPPool
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


@dataclass(kw_only=True)
class Environment(HTTPPool):
    """What actions share in one runner: the network policy, and (as an `HTTPPool`) the
    kept-alive HTTP connections and the TLS context."""

    policy: NetworkPolicy

    @classmethod
    def create(cls, policy: NetworkPolicy) -> Environment:
        return cls(policy=policy)


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
