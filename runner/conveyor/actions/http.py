"""HTTP for actions: SSRF-checked, time-bounded, response capped, failures classified.

The protocol is h11's: it writes the request and parses the response (status line,
headers with obsolete folding, interim 1xx responses, a body framed by Content-Length,
chunked transfer coding or the end of the connection), and it says whether the
connection may carry another request. Whatever it refuses — a chunk size such as `0x2`,
`+2` or `-1`, a Content-Length that is not ASCII digits, a folded line before the first
header, a body cut short — is a retryable connection failure (like a reset), and the
connection is closed, never put back.

What is the runner's own, on top of it:

* SSRF: every request resolves the host once and checks every address
  (`netguard.pin`); the connection goes to the checked address, the Host header and
  the TLS server name (SNI and certificate check) are the URL's host name
  (`http_pool.HTTPConnection`).
* Keep-alive: idle connections are kept per destination by the `HTTPPool` the actions'
  `Environment` is; a connection is put back only when h11 says both sides are done
  with the exchange and nothing was received beyond the response. A kept-alive
  connection the server closed while it was idle fails before any byte of a response
  arrives: the request is then sent once more on a new connection (only then: a new
  connection's failure is reported).
* The whole exchange (connect, TLS, send, every read) is bounded by `timeout_s`: each
  socket operation gets only the time that is left, so a response that trickles in
  (headers included) cannot hold an action thread past its timeout.
* The response head is at most 64 KiB and 100 headers; at most MAX_BODY_BYTES of the
  body (decompressed) are read, and a connection whose body was cut there is closed.
* No cookies, no redirects followed, no proxies from the environment,
  `User-Agent: Conveyor`.

Sockets and h11 rather than httpx or the standard library's `http.client`, because the
runner's throughput is set by CPU per request: a burst of webhooks is 16 threads making
small requests to a few destinations. h11 is pure Python: a small POST costs about twice
the CPU of the hand-parsed client it replaced (under half of httpx's);
`make bench-http-client` (bench/http_client_cpu.py) measures it, bench/RESULTS.md has
the numbers.
"""

from __future__ import annotations

import base64
import json
import re
import time
import zlib
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode

import h11

from conveyor.actions.base import ActionError, Environment
from conveyor.actions.http_pool import HTTPConnection
from conveyor.connections import Connection, HostNotAllowed
from conveyor.netguard import BlockedAddress, ResolveError, Target, pin

MAX_BODY_BYTES = 64 * 1024
RETRYABLE_STATUS = {408, 429}
USER_AGENT = "Conveyor"

_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE = re.compile(r"[\x20-\x7e\t]*")  # printable ASCII: no line breaks, no controls
# Set from the request itself: a caller's value could break the message's framing.
_OWN_HEADERS = {"host", "content-length", "transfer-encoding"}
_BODY_METHODS = {"POST", "PUT", "PATCH"}
_COMPRESSED = {"gzip", "x-gzip", "deflate"}
_MAX_HEAD = 64 * 1024  # status line and headers together
_MAX_HEADERS = 100


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 as the runner reads it (a retryable failure)."""


class _ClosedBeforeResponse(ConnectionResetError):
    """The connection ended before any byte of a response: on a kept-alive connection, the
    server closed it while it was idle."""


# How a kept-alive connection fails when the server closed it while it was idle.
_CLOSED_WHILE_IDLE = (ConnectionResetError, BrokenPipeError)


@dataclass
class _Response:
    status: int
    headers: dict[str, str]  # names in lower case; repeated headers' values joined with ", "


def _request(
    method: str,
    target: Target,
    head: list[tuple[str, str]],
    body: bytes | None,
    protocol: h11.Connection | None = None,
) -> bytes:
    """The request's bytes as `protocol` (h11, which then expects its response) writes them:
    the Host header and the body's Content-Length from `target` and `body`, then `head`."""
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
    # as bytes: h11 takes them as they are (ASCII, checked by _request_headers and above)
    headers = [(b"Host", target.host_header.encode()), *((n.encode(), v.encode()) for n, v in head)]
    if body is not None or method in _BODY_METHODS:
        headers.append((b"Content-Length", b"%d" % len(body or b"")))
    protocol = protocol or h11.Connection(h11.CLIENT)
    try:
        request = h11.Request(method=method.encode(), target=target.path.encode(), headers=headers)
        data = protocol.send(request)
        if body:
            data += protocol.send(h11.Data(data=body))
        data += protocol.send(h11.EndOfMessage())
    except h11.LocalProtocolError as exc:
        raise ActionError(f"cannot send the request: {exc}", retryable=False, kind="invalid_input") from exc
    return data


def _read_head(connection: HTTPConnection, protocol: h11.Connection, deadline: float) -> _Response:
    """Status and headers of the final response (interim 1xx responses are skipped)."""
    received = False
    event: Any = h11.NEED_DATA  # nothing can have arrived before the request was sent
    while True:
        if event is h11.NEED_DATA:
            data = connection.recv(deadline)
            if not data and not received:
                raise _ClosedBeforeResponse("the server closed the connection without a response")
            received = True
            protocol.receive_data(data)
        elif type(event) is h11.Response:
            if not event.http_version.startswith(b"1."):
                raise ProtocolError(f"not an HTTP/1.x response: HTTP/{event.http_version.decode()}")
            if len(event.headers) > _MAX_HEADERS:
                raise ProtocolError(f"more than {_MAX_HEADERS} response headers")
            headers: dict[str, str] = {}
            for raw_name, raw_value in event.headers.raw_items():
                name, value = raw_name.decode("ascii").lower(), raw_value.decode("latin-1")
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
            return _Response(event.status_code, headers)
        elif type(event) is not h11.InformationalResponse:  # 100 Continue and the like precede the answer
            raise ProtocolError(f"unexpected before the response's head: {event!r}")
        event = protocol.next_event()


def _read_body(
    connection: HTTPConnection, protocol: h11.Connection, response: _Response, deadline: float
) -> tuple[bytes, bool, bool]:
    """The body (decompressed when the server compressed it), at most MAX_BODY_BYTES of it;
    whether there was more; and whether the connection may carry another request (the whole
    exchange done, the server not closing, nothing received beyond the response)."""
    encoding = response.headers.get("content-encoding", "").strip().lower()
    decoder = zlib.decompressobj(wbits=zlib.MAX_WBITS | 32) if encoding in _COMPRESSED else None
    chunks: list[bytes] = []
    size = 0
    capped = False
    while not capped:
        event = protocol.next_event()
        if event is h11.NEED_DATA:
            protocol.receive_data(connection.recv(deadline))
        elif type(event) is h11.Data:
            data = event.data
            if decoder is not None:
                data = decoder.decompress(data, MAX_BODY_BYTES + 1 - size)
            chunks.append(data)
            size += len(data)
            capped = size > MAX_BODY_BYTES  # the rest is left unread: the connection is closed
        elif type(event) is h11.EndOfMessage:
            break
        else:
            raise ProtocolError(f"unexpected in the response's body: {event!r}")
    if not capped and decoder is not None:
        chunks.append(decoder.flush())
    raw = b"".join(chunks)
    reusable = (
        not capped
        and protocol.our_state is h11.DONE
        and protocol.their_state is h11.DONE
        and not protocol.trailing_data[0]
    )
    return raw[:MAX_BODY_BYTES], capped or len(raw) > MAX_BODY_BYTES, reusable


def _exchange(
    env: Environment,
    target: Target,
    method: str,
    head: list[tuple[str, str]],
    body: bytes | None,
    deadline: float,
) -> tuple[HTTPConnection, h11.Connection, _Response]:
    """Send the request and read the response's status and headers.

    A kept-alive connection that fails before any byte of the response (the server closed
    it while it was idle) is given up and the request sent once more on a new connection.
    """
    protocol = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEAD)
    data = _request(method, target, head, body, protocol)  # before a connection is taken
    connection = env.take_connection(target.destination)
    reused = connection is not None
    while True:
        if connection is None:
            connection = HTTPConnection.open(env.tls_context(), target, deadline)
        try:
            connection.send(data, deadline)
            return connection, protocol, _read_head(connection, protocol, deadline)
        except _CLOSED_WHILE_IDLE:
            connection.close()
            if not reused:
                raise
            connection, reused = None, False
            protocol = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEAD)
            data = _request(method, target, head, body, protocol)
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
    head = _request_headers(headers, form=form, auth=auth)

    try:
        connection, protocol, response = _exchange(env, target, method, head, body, deadline)
        try:
            raw, truncated, reusable = _read_body(connection, protocol, response, deadline)
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
    except h11.RemoteProtocolError as exc:
        raise ActionError(
            f"{method} {url} failed: the response is not valid HTTP/1.1: {exc}",
            retryable=True,
            kind="connection",
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
