"""HTTP for actions: SSRF-checked, time-bounded, response capped, failures classified.

The request is written here, in one piece (its method, path and headers checked first);
the response is parsed by httptools, the binding of Node's llhttp (C), in
`http_response.py`, which also says what llhttp is not told (a HEAD request, the end of
the stream), what is refused (obsolete line folding among it) and when a connection may
carry another request. Whatever the parser refuses — a chunk size such as `0x2`, `+2` or
`-1`, a Content-Length that is not ASCII digits, a folded header line, a body cut short —
is a retryable connection failure (like a reset), and the connection is closed, never
put back.

What is the runner's own, on top of it:

* SSRF: every request resolves the host once and checks every address
  (`netguard.pin`); the connection goes to the checked address, the Host header and
  the TLS server name (SNI and certificate check) are the URL's host name
  (`http_pool.HTTPConnection`).
* Keep-alive: idle connections are kept per destination by the `HTTPPool` the actions'
  `Environment` is; a connection is put back only when its response ended where its
  framing says, the server keeps it alive and nothing was received beyond the response.
  A kept-alive connection the server closed while it was idle fails before any byte of
  a response arrives: the request is then sent once more on a new connection (only
  then: a new connection's failure is reported).
* The whole exchange (connect, TLS, send, every read) is bounded by `timeout_s`: each
  socket operation gets only the time that is left, so a response that trickles in
  (headers included) cannot hold an action thread past its timeout.
* The response head is at most 64 KiB and 100 headers; at most MAX_BODY_BYTES of the
  body (decompressed) are read, and a connection whose body was cut there is closed.
* No cookies, no redirects followed, no proxies from the environment,
  `User-Agent: Conveyor`.

Sockets and llhttp rather than httpx, h11 or the standard library's `http.client`,
because the runner's throughput is set by CPU per request: a burst of webhooks is 16
threads making small requests to a few destinations. h11 (pure Python) cost twice the
CPU per small POST of the hand-parsed client before it; with llhttp a small POST costs
somewhat less than with that client (0.8-0.95x, at 1 thread and at 16).
`make bench-http-client` (bench/http_client_cpu.py) measures it, bench/RESULTS.md has
the numbers.
"""

from __future__ import annotations

import base64
import json
import re
import time
import zlib
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode

from conveyor.actions.base import ActionError, Environment
from conveyor.actions.http_pool import HTTPConnection
from conveyor.actions.http_response import (
    MAX_BODY_BYTES,
    ProtocolError,
    Response,
    ResponseReader,
)
from conveyor.connections import Connection, HostNotAllowed
from conveyor.netguard import BlockedAddress, ResolveError, Target, pin

__all__ = ["MAX_BODY_BYTES", "ProtocolError", "retry_after_seconds", "send"]

RETRYABLE_STATUS = {408, 429}
USER_AGENT = "Conveyor"

_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE = re.compile(r"[\x20-\x7e\t]*")  # printable ASCII: no line breaks, no controls
# Set from the request itself: a caller's value could break the message's framing.
_OWN_HEADERS = {"host", "content-length", "transfer-encoding"}
_BODY_METHODS = {"POST", "PUT", "PATCH"}

# How a kept-alive connection fails when the server closed it while it was idle.
_CLOSED_WHILE_IDLE = (ConnectionResetError, BrokenPipeError)


def _request(method: str, target: Target, head: list[tuple[str, str]], body: bytes | None) -> bytes:
    """The request's bytes, head and body in one write (one system call, one packet): the
    Host header and the body's Content-Length from `target` and `body`, then `head`."""
    # the method is a token and the path quoted by netguard.pin: checked anyway, because
    # a space or line break in either would change the request's framing
    if (
        not _HEADER_NAME.fullmatch(method)
        or not target.path.isascii()
        or not target.path.isprintable()
        or " " in target.path
    ):
        raise ActionError(
            f"cannot send the request: the method {method!r} must be a token and the path"
            f" {target.path!r} printable ASCII without spaces",
            retryable=False,
            kind="invalid_input",
        )
    lines = [f"{method} {target.path} HTTP/1.1", f"Host: {target.host_header}"]
    lines += [f"{name}: {value}" for name, value in head]  # checked by _request_headers
    if body is not None or method in _BODY_METHODS:
        lines.append(f"Content-Length: {len(body or b'')}")
    lines += ("", "")
    try:
        data = "\r\n".join(lines).encode("ascii")
    except UnicodeEncodeError as exc:
        raise ActionError(
            f"cannot send the request: its head is not ASCII: {exc}", retryable=False, kind="invalid_input"
        ) from exc
    return data + body if body else data


def _exchange(
    env: Environment, target: Target, method: str, request: bytes, deadline: float
) -> tuple[HTTPConnection, ResponseReader, Response]:
    """Send the request and read the response's status and headers.

    A kept-alive connection that fails before any byte of the response (the server closed
    it while it was idle) is given up and the request sent once more on a new connection.
    """
    connection = env.take_connection(target.destination)
    reused = connection is not None
    while True:
        if connection is None:
            connection = HTTPConnection.open(env.tls_context(), target, deadline)
        reader = ResponseReader(method)
        try:
            connection.send(request, deadline)
            return connection, reader, reader.read_head(connection, deadline)
        except _CLOSED_WHILE_IDLE:
            connection.close()
            if not reused:
                raise
            connection, reused = None, False
        except BaseException:
            connection.close()
            raise


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


def _form_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _form(data: dict[str, Any]) -> bytes:
    pairs = []
    for key, value in data.items():
        for item in value if isinstance(value, list | tuple) else (value,):
            pairs.append((str(key), _form_value(item)))
    return urlencode(pairs).encode()


def _request_headers(
    headers: dict[str, str] | None, *, form: bool, auth: tuple[str, str] | None
) -> list[tuple[str, str]]:
    """The request's headers but Host and Content-Length (`_request` sets those)."""
    lines = []
    given = set()
    for name, given_value in (headers or {}).items():
        value = given_value.strip(" \t")
        if not _HEADER_NAME.fullmatch(name):
            raise ActionError(f"{name!r} is not a valid header name", retryable=False, kind="invalid_input")
        if not _HEADER_VALUE.fullmatch(value):
            raise ActionError(
                f"the header {name!r} must be printable ASCII without line breaks",
                retryable=False,
                kind="invalid_input",
            )
        lowered = name.lower()
        if lowered in _OWN_HEADERS or (auth is not None and lowered == "authorization"):
            continue
        given.add(lowered)
        lines.append((name, value))
    if "user-agent" not in given:
        lines.append(("User-Agent", USER_AGENT))
    if "accept" not in given:
        lines.append(("Accept", "*/*"))
    if form and "content-type" not in given:
        lines.append(("Content-Type", "application/x-www-form-urlencoded"))
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        lines.append(("Authorization", f"Basic {token}"))
    return lines


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
    credentials: Connection | None = None,
) -> dict[str, Any]:
    """Perform one request; return {"status", "headers", "body"} for a 2xx, raise ActionError otherwise.

    The whole exchange is bounded by `timeout_s` (connect, send, and reading the body).
    `data` is sent form-encoded (when there is no `content`); `auth` is HTTP basic auth.
    A request that carries the `credentials` of a connection goes only to an origin the
    connection names (`Connection.check_url`): to any other nothing is sent, not even a DNS query.
    Redirects are never followed, so they cannot take the credentials elsewhere either.
    """
    deadline = time.monotonic() + timeout_s
    try:
        if credentials is not None:
            credentials.check_url(url)
        target = pin(env.policy, url)
    except HostNotAllowed as exc:
        raise ActionError(str(exc), retryable=False, kind="host_not_allowed") from exc
    except BlockedAddress as exc:
        raise ActionError(str(exc), retryable=False, kind="blocked_address") from exc
    except ResolveError as exc:
        raise ActionError(str(exc), retryable=True, kind="dns") from exc
    except ValueError as exc:
        raise ActionError(f"invalid URL: {exc}", retryable=False, kind="invalid_input") from exc
    form = content is None and data is not None
    body = _form(data) if data is not None and content is None else content
    request = _request(method, target, _request_headers(headers, form=form, auth=auth), body)

    try:
        connection, reader, response = _exchange(env, target, method, request, deadline)
        try:
            raw, truncated, reusable = reader.read_body(connection, response, deadline)
        except BaseException:
            connection.close()
            raise
        if reusable:
            env.put_connection(target.destination, connection)
        else:  # the rest of the body is unread, or the server ends the connection
            connection.close()
    except TimeoutError as exc:
        raise ActionError(
            f"{method} {url} timed out after {timeout_s:g}s", retryable=True, kind="timeout"
        ) from exc
    except (OSError, ProtocolError, zlib.error) as exc:
        raise ActionError(
            f"{method} {url} failed: {exc or type(exc).__name__}", retryable=True, kind="connection"
        ) from exc

    status = response.status
    response_headers = response.headers
    output: dict[str, Any] = {
        "status": status,
        "headers": response_headers,
        "body": _decode_body(raw, response_headers.get("content-type", ""), truncated),
    }
    if truncated:
        output["body_truncated"] = True
    if 200 <= status < 300:
        return output
    retryable = status >= 500 or status in RETRYABLE_STATUS
    raise ActionError(
        f"{method} {url} answered HTTP {status}",
        retryable=retryable,
        kind="http_status",
        retry_after_s=retry_after_seconds(response_headers.get("retry-after")) if retryable else None,
        output=output,
        details={"status": status},
    )
