"""HTTP for actions: SSRF-checked, time-bounded, response capped, failures classified."""

from __future__ import annotations

import json
import time
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from conveyor.actions.base import ActionError, Environment
from conveyor.netguard import BlockedAddress, ResolveError, pinned_request

MAX_BODY_BYTES = 64 * 1024
RETRYABLE_STATUS = {408, 429}


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: either a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


def _decode_body(raw: bytes, content_type: str, truncated: bool) -> Any:
    text = raw.decode("utf-8", errors="replace")
    if not truncated and "json" in content_type.lower() and text.strip():
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def send(
    env: Environment,
    method: str,
    url: str,
    *,
    timeout_s: float,
    headers: dict[str, str] | None = None,
    content: bytes | None = None,
    data: dict[str, Any] | None = None,
    auth: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Perform one request; return {"status", "headers", "body"} for a 2xx, raise ActionError otherwise.

    The whole exchange is bounded by `timeout_s` (connect, send, and reading the body).
    """
    deadline = time.monotonic() + timeout_s
    try:
        request = pinned_request(
            env.http,
            env.policy,
            method,
            url,
            headers=headers,
            content=content,
            data=data,
            auth=auth,
            timeout=httpx.Timeout(timeout_s),
        )
    except BlockedAddress as exc:
        raise ActionError(str(exc), retryable=False, kind="blocked_address") from exc
    except ResolveError as exc:
        raise ActionError(str(exc), retryable=True, kind="dns") from exc
    except (httpx.InvalidURL, ValueError) as exc:
        raise ActionError(f"invalid URL: {exc}", retryable=False, kind="invalid_input") from exc

    try:
        response = env.client_for(request).send(request, stream=True)
        try:
            chunks: list[bytes] = []
            size = 0
            truncated = False
            for chunk in response.iter_bytes():
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout("the response took longer than the action's timeout")
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    truncated = True
                    break
        finally:
            response.close()
    except httpx.TimeoutException as exc:
        raise ActionError(
            f"{method} {url} timed out after {timeout_s:g}s", retryable=True, kind="timeout"
        ) from exc
    except (httpx.TransportError, OSError) as exc:
        raise ActionError(
            f"{method} {url} failed: {exc or type(exc).__name__}", retryable=True, kind="connection"
        ) from exc

    raw = b"".join(chunks)[:MAX_BODY_BYTES]
    output: dict[str, Any] = {
        "status": response.status_code,
        "headers": dict(response.headers),
        "body": _decode_body(raw, response.headers.get("content-type", ""), truncated),
    }
    if truncated:
        output["body_truncated"] = True
    status = response.status_code
    if 200 <= status < 300:
        return output
    retryable = status >= 500 or status in RETRYABLE_STATUS
    raise ActionError(
        f"{method} {url} answered HTTP {status}",
        retryable=retryable,
        kind="http_status",
        retry_after_s=retry_after_seconds(response.headers.get("retry-after")) if retryable else None,
        output=output,
        details={"status": status},
    )
