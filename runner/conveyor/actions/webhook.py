"""webhook.send: an HTTP request with a JSON body, an Idempotency-Key and an optional signature.

input: {"url", "method": "POST", "headers": {...}, "body": <json>, "timeout": "10s"}
(input.timeout can only shorten the step's timeout, which bounds the message's visibility)
connection (optional, kind webhook): config.url (default URL), config.allowed_hosts (other
origins a step's input.url may name: the connection's headers and signature go to no other),
config.headers; secret.signing_secret (signs the body), secret.headers (e.g. Authorization).
Signature header: `X-Conveyor-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
output: {"status", "headers", "body"} (body capped at 64 KiB).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from typing import Any

from conveyor.actions import http
from conveyor.actions.base import ActionRequest, Environment, InvalidInput, string_map, text_field

METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"}
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def duration_s(value: Any) -> float:
    """input.timeout as seconds: a number of seconds or "500ms", "10s", "2m", "1h"."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    match = _DURATION.match(value) if isinstance(value, str) else None
    if not match or float(match.group(1)) <= 0:
        raise InvalidInput(f"input.timeout: expected a duration like 10s or 500ms (got {value!r})")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def signature(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def send(request: ActionRequest, env: Environment) -> dict[str, Any]:
    data = request.input
    config: dict[str, Any] = {}
    secret: dict[str, Any] = {}
    connection = None
    if request.connection is not None:
        connection = request.require_connection("webhook")
        config, secret = connection.config, connection.secret
    url = text_field(data, "url") or (str(config["url"]) if config.get("url") else None)
    if not url:
        raise InvalidInput("input.url is required (or a webhook connection with config.url)")
    method = (text_field(data, "method") or "POST").upper()
    if method not in METHODS:
        raise InvalidInput(f"input.method must be one of {', '.join(sorted(METHODS))}, not {method!r}")

    headers: dict[str, str] = {}
    headers.update(string_map(config, "headers"))
    headers.update(string_map(data, "headers"))
    headers.update(string_map(secret, "headers"))
    headers["Idempotency-Key"] = request.idempotency_key

    body: bytes | None = None
    if data.get("body") is not None and method != "HEAD":
        body = json.dumps(data["body"], separators=(",", ":"), ensure_ascii=False).encode()
        headers.setdefault("Content-Type", "application/json")
    if secret.get("signing_secret"):
        headers["X-Conveyor-Signature"] = signature(
            str(secret["signing_secret"]), body or b"", int(time.time())
        )
    timeout_s = request.timeout_s
    if data.get("timeout") is not None:
        timeout_s = min(timeout_s, duration_s(data["timeout"]))
    return http.send(
        env, method, url, timeout_s=timeout_s, headers=headers, content=body, credentials=connection
    )
