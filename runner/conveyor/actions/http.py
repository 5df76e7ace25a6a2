"""HTTP for actions: SSRF-checked, time-bounded, response capped, failures classified.

Built on the standard library's `http.client`, not httpx (STYLE.md's example HTTP
library), because the runner's throughput target is set by CPU per request: a burst of
webhooks is 16 threads making small requests to a few destinations, and httpx's layers
(httpx.Client -> httpcore's connection pool -> h11) cost far more CPU than the exchange
itself, with httpcore's pool lock contended by the 16 threads. CPU time of the runner's
process per request (time.process_time), 2,000 POSTs of a small JSON body to a local
keep-alive server in another process, median of 5 rounds, the same 2-core machine:

                          16 threads: http.send   perform(webhook.send)   1 thread: http.send
    httpx (before)        840-1,110 us            840-1,030 us            550-650 us
    http.client (this)    220-385 us              245-450 us              175-205 us

(ranges over repeated runs on a shared machine). Of the ~190 us left on one thread, the
bare socket exchange is ~22 us; http.client's own work (its header parser is the email
package's) is ~100 us; resolving and checking the destination, the pool and the
response's decoding the rest.

What httpx gave us is kept here, explicitly:

* SSRF: every request resolves the host once and checks every address
  (`netguard.pin`); the connection goes to the checked address, the Host header and
  the TLS server name (SNI and certificate check) are the URL's host name.
* Keep-alive: idle connections are kept per destination by `Environment`; a connection
  is put back only when its response was read completely and the server did not say
  `Connection: close`. A kept-alive connection the server closed while it was idle
  fails before any byte of a response arrives: the request is then sent once more on a
  new connection (only then: a new connection's failure is reported).
* The whole exchange (connect, TLS, send, every read) is bounded by `timeout_s`: each
  socket operation gets only the time that is left, so a response that trickles in
  (headers included) cannot hold an action thread past its timeout.
* No cookies (http.client keeps none), no redirects followed, no proxies from the
  environment, `User-Agent: Conveyor`.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import re
import socket
import ssl
import time
import zlib
from email.utils import parsedate_to_datetime
from typing import Any, cast
from urllib.parse import urlencode

from conveyor.actions.base import ActionError, Environment
from conveyor.netguard import BlockedAddress, ResolveError, Target, pin

MAX_BODY_BYTES = 64 * 1024
RETRYABLE_STATUS = {408, 429}
USER_AGENT = "Conveyor"

_READ_SIZE = 64 * 1024
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Set from the request itself: a caller's value could break the message's framing.
_OWN_HEADERS = {"host", "content-length", "transfer-encoding"}
_BODY_METHODS = {"POST", "PUT", "PATCH"}
_COMPRESSED = {"gzip", "x-gzip", "deflate"}
# How a kept-alive connection fails when the server closed it while it was idle
# (http.client.RemoteDisconnected, no response byte at all, is a ConnectionResetError).
_CLOSED_WHILE_IDLE = (ConnectionResetError, BrokenPipeError)


class _Timeout(TimeoutError):
    pass


def _time_left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _Timeout("the action's timeout has passed")
    return left


class _Connection(http.client.HTTPConnection):
    """An HTTP connection that sends a request's head and body in one write.

    http.client writes them separately: two system calls, and two packets since it turns
    Nagle's algorithm off (about a tenth of the CPU per request, measured over loopback).
    """

    _body: bytes | None = None

    def end_request(self, body: bytes | None) -> None:
        """endheaders(body), with `body` sent in the same write as the head."""
        self._body = body
        try:
            self.endheaders()
        finally:
            self._body = None

    def send(self, data: Any) -> None:
        body, self._body = self._body, None
        super().send(data + body if body else data)


class _DeadlineReader(io.RawIOBase):
    """A socket's reads, each given only the time left before the deadline: the whole
    response (status line, headers, body) is bounded, however slowly it trickles in."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._io = sock.makefile("rb", buffering=0)  # holds the socket open while the response reads
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        self._sock.settimeout(_time_left(self._deadline))
        return self._io.readinto(buffer)

    def close(self) -> None:
        self._io.close()
        super().close()


class _DeadlineSocket:
    """What http.client.HTTPResponse is given as its socket: it only calls makefile("rb")."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))


def _response_until(deadline: float) -> type[http.client.HTTPResponse]:
    """A `response_class` for HTTPConnection whose responses read within `deadline`."""

    def response(sock: socket.socket, *args: Any, **kwargs: Any) -> http.client.HTTPResponse:
        return http.client.HTTPResponse(cast(socket.socket, _DeadlineSocket(sock, deadline)), *args, **kwargs)

    return cast("type[http.client.HTTPResponse]", response)


class _PinnedHTTPSConnection(_Connection):
    """HTTPS to a checked address; SNI and the certificate check use the URL's host name."""

    default_port = 443

    def __init__(
        self, address: str, port: int, *, server_hostname: str, context: ssl.SSLContext, timeout: float
    ) -> None:
        super().__init__(address, port, timeout=timeout)
        self._server_hostname = server_hostname
        self._tls_context = context

    def connect(self) -> None:
        super().connect()
        self.sock = self._tls_context.wrap_socket(self.sock, server_hostname=self._server_hostname)


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
    target: Target,
    method: str,
    headers: dict[str, str] | None,
    body: bytes | None,
    *,
    form: bool,
    auth: tuple[str, str] | None,
) -> list[tuple[str, str]]:
    lines = [("Host", target.host_header)]
    given = set()
    for name, value in (headers or {}).items():
        if not _HEADER_NAME.fullmatch(name):
            raise ActionError(f"{name!r} is not a valid header name", retryable=False, kind="invalid_input")
        if not value.isascii() or "\r" in value or "\n" in value or "\0" in value:
            raise ActionError(
                f"the header {name!r} must be ASCII without line breaks",
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
    if body is not None or method in _BODY_METHODS:
        lines.append(("Content-Length", str(len(body or b""))))
    return lines


def _new_connection(env: Environment, target: Target, deadline: float) -> _Connection:
    if target.scheme == "https":
        return _PinnedHTTPSConnection(
            target.address,
            target.port,
            server_hostname=target.host,
            context=env.tls_context(),
            timeout=_time_left(deadline),
        )
    return _Connection(target.address, target.port, timeout=_time_left(deadline))


def _exchange(
    env: Environment,
    target: Target,
    method: str,
    head: list[tuple[str, str]],
    body: bytes | None,
    deadline: float,
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """Send the request and read the response's status and headers.

    A kept-alive connection that fails before any byte of the response (the server closed
    it while it was idle) is given up and the request sent once more on a new connection.
    """
    connection = env.take_connection(target.destination)
    assert connection is None or isinstance(connection, _Connection)  # the pool holds only these
    reused = connection is not None
    while True:
        if connection is None:
            connection = _new_connection(env, target, deadline)  # connects on the first send
        elif connection.sock is not None:
            connection.sock.settimeout(_time_left(deadline))
        try:
            connection.putrequest(method, target.path, skip_host=True, skip_accept_encoding=True)
            for name, value in head:
                connection.putheader(name, value)
            connection.end_request(body)
            connection.response_class = _response_until(deadline)
            return connection, connection.getresponse()
        except _CLOSED_WHILE_IDLE:
            connection.close()
            if not reused:
                raise
            connection, reused = None, False
        except BaseException:
            connection.close()
            raise


def _read_body(response: http.client.HTTPResponse) -> tuple[bytes, bool]:
    """The body (decompressed when the server compressed it), at most MAX_BODY_BYTES + 1
    bytes of it, and whether there was more."""
    encoding = (response.getheader("content-encoding") or "").strip().lower()
    decoder = zlib.decompressobj(wbits=zlib.MAX_WBITS | 32) if encoding in _COMPRESSED else None
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = response.read1(_READ_SIZE if decoder else MAX_BODY_BYTES + 1 - size)
        if not chunk:
            break
        if decoder is not None:
            chunk = decoder.decompress(chunk, MAX_BODY_BYTES + 1 - size)
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return b"".join(chunks)[:MAX_BODY_BYTES], True
    if response.length:  # the server closed the connection before the end of the body
        raise http.client.IncompleteRead(b"".join(chunks), response.length)
    response.read()  # the end of the message: marks the response complete, frees the connection
    if decoder is not None:
        chunks.append(decoder.flush())
    raw = b"".join(chunks)
    return raw[:MAX_BODY_BYTES], len(raw) > MAX_BODY_BYTES


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
    `data` is sent form-encoded (when there is no `content`); `auth` is HTTP basic auth.
    """
    deadline = time.monotonic() + timeout_s
    try:
        target = pin(env.policy, url)
    except BlockedAddress as exc:
        raise ActionError(str(exc), retryable=False, kind="blocked_address") from exc
    except ResolveError as exc:
        raise ActionError(str(exc), retryable=True, kind="dns") from exc
    except ValueError as exc:
        raise ActionError(f"invalid URL: {exc}", retryable=False, kind="invalid_input") from exc
    form = content is None and data is not None
    body = _form(data) if data is not None and content is None else content
    head = _request_headers(target, method, headers, body, form=form, auth=auth)

    try:
        connection, response = _exchange(env, target, method, head, body, deadline)
        try:
            raw, truncated = _read_body(response)
        except BaseException:
            response.close()
            connection.close()
            raise
        if not truncated and response.isclosed() and not response.will_close:
            env.put_connection(target.destination, connection)
        else:  # the rest of the body is unread, or the server ends the connection
            response.close()
            connection.close()
    except TimeoutError as exc:
        raise ActionError(
            f"{method} {url} timed out after {timeout_s:g}s", retryable=True, kind="timeout"
        ) from exc
    except (OSError, http.client.HTTPException, zlib.error) as exc:
        raise ActionError(
            f"{method} {url} failed: {exc or type(exc).__name__}", retryable=True, kind="connection"
        ) from exc

    status = response.status
    response_headers: dict[str, str] = {}
    for name, value in response.getheaders():
        key = name.lower()
        response_headers[key] = f"{response_headers[key]}, {value}" if key in response_headers else value
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
