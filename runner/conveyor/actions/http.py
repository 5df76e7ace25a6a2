"""HTTP for actions: SSRF-checked, time-bounded, response capped, failures classified.

A small HTTP/1.1 client on sockets, not httpx (STYLE.md's example HTTP library) nor the
standard library's `http.client`, because the runner's throughput target is set by CPU
per request: a burst of webhooks is 16 threads making small requests to a few
destinations. CPU time of the runner's process per request (time.process_time), 3,000
POSTs of a small JSON body through perform(webhook.send) to a local keep-alive server in
another process, the same 2-core machine:

                          16 threads      1 thread
    httpx                 840-1,030 us    550-650 us
    http.client           316 us          184 us
    this client           234 us          114 us

http.client parsed every response's headers with the email package (a third of its
cost) and built the request header by header; here the request is one prepared write
and the response head is split by hand. What it reads: a status line (interim 1xx
responses skipped), headers (at most 100 lines of at most 64 KiB, obsolete folding
joined), a body framed by Content-Length, chunked transfer coding or the end of the
connection; anything else is a ProtocolError (a retryable failure, like a reset).

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
* No cookies, no redirects followed, no proxies from the environment,
  `User-Agent: Conveyor`.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import time
import zlib
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode

from conveyor.actions.base import ActionError, Environment
from conveyor.connections import Connection, HostNotAllowed
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
_MAX_LINE = 64 * 1024  # a status or header line (http.client's limit)
_MAX_HEADERS = 100


class _Timeout(TimeoutError):
    pass


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.x as the runner reads it (a retryable failure)."""


class _ClosedBeforeResponse(ConnectionResetError):
    """The connection ended before any byte of a response: on a kept-alive connection, the
    server closed it while it was idle."""


# How a kept-alive connection fails when the server closed it while it was idle.
_CLOSED_WHILE_IDLE = (ConnectionResetError, BrokenPipeError)


def _time_left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _Timeout("the action's timeout has passed")
    return left


class HTTPConnection:
    """One HTTP/1.1 connection to a checked address (TLS with the URL's host name as the
    server name for https), with the bytes received and not yet parsed.

    Every socket operation is given only the time left before the exchange's deadline, so
    a response that trickles in (headers included) cannot hold an action past its timeout.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock: socket.socket | None = sock
        self._buffer = bytearray()

    @classmethod
    def open(cls, env: Environment, target: Target, deadline: float) -> HTTPConnection:
        sock = socket.create_connection((target.address, target.port), timeout=_time_left(deadline))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if target.scheme == "https":
                sock.settimeout(_time_left(deadline))
                sock = env.tls_context().wrap_socket(sock, server_hostname=target.host)
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    @property
    def idle(self) -> bool:
        """Nothing received beyond the last response: the connection may carry another request."""
        return self.sock is not None and not self._buffer

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _live(self, deadline: float) -> socket.socket:
        if self.sock is None:
            raise ConnectionResetError("the connection is closed")
        self.sock.settimeout(_time_left(deadline))
        return self.sock

    def send(self, data: bytes, deadline: float) -> None:
        self._live(deadline).sendall(data)

    def _fill(self, deadline: float) -> bool:
        """Receive more bytes into the buffer; False at the end of the stream."""
        chunk = self._live(deadline).recv(_READ_SIZE)
        self._buffer += chunk
        return bool(chunk)

    def read_line(self, deadline: float) -> bytes | None:
        """The next line (with its line break); None when the stream ended before one began."""
        start = 0
        while True:
            end = self._buffer.find(b"\n", start)
            if end >= 0:
                line = bytes(self._buffer[: end + 1])
                del self._buffer[: end + 1]
                return line
            if len(self._buffer) > _MAX_LINE:
                raise ProtocolError(f"a response line longer than {_MAX_LINE} bytes")
            start = len(self._buffer)
            if not self._fill(deadline):
                if self._buffer:
                    raise ProtocolError("the response ended in the middle of a line")
                return None

    def read(self, deadline: float, size: int) -> bytes:
        """Up to `size` bytes (at least one); b"" at the end of the stream."""
        if not self._buffer and not self._fill(deadline):
            return b""
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data


@dataclass
class _Response:
    status: int
    headers: list[tuple[str, str]]  # as received: names as the server wrote them
    keep_alive: bool  # HTTP/1.1 without "Connection: close", or HTTP/1.0 with keep-alive

    def header(self, name: str) -> str | None:
        """The header's values joined with ", " (None when absent); `name` in lower case."""
        values = [v for n, v in self.headers if n.lower() == name]
        return ", ".join(values) if values else None


def _read_head(connection: HTTPConnection, deadline: float) -> _Response:
    """Status line and headers of the final response (interim 1xx responses are skipped)."""
    first = True
    while True:
        line = connection.read_line(deadline)
        if line is None:
            if first:
                raise _ClosedBeforeResponse("the server closed the connection without a response")
            raise ProtocolError("the response ended in its head")
        first = False
        version, _, rest = line.rstrip(b"\r\n").partition(b" ")
        code = rest[:3]
        if (
            not version.startswith(b"HTTP/1.")
            or len(code) != 3
            or not code.isdigit()
            or rest[3:4] not in (b"", b" ")
        ):
            raise ProtocolError(f"not an HTTP/1.x status line: {line[:100]!r}")
        headers: list[tuple[str, str]] = []
        while True:
            line = connection.read_line(deadline)
            if line is None:
                raise ProtocolError("the response ended in its headers")
            if line in (b"\r\n", b"\n"):
                break
            if len(headers) >= _MAX_HEADERS:
                raise ProtocolError(f"more than {_MAX_HEADERS} response headers")
            text = line.decode("latin-1").rstrip("\r\n")
            if text[:1] in (" ", "\t") and headers:  # an obsolete folded line: part of the value
                name, value = headers[-1]
                headers[-1] = (name, f"{value} {text.strip()}")
                continue
            name, colon, value = text.partition(":")
            if not colon or not _HEADER_NAME.fullmatch(name):
                raise ProtocolError(f"not a header line: {line[:100]!r}")
            headers.append((name, value.strip()))
        status = int(code)
        if 100 <= status < 200 and status != 101:
            continue  # 100 Continue and other interim responses precede the real one
        tokens = {t.strip().lower() for n, v in headers if n.lower() == "connection" for t in v.split(",")}
        keep_alive = "close" not in tokens and (version != b"HTTP/1.0" or "keep-alive" in tokens)
        return _Response(status, headers, keep_alive)


def _framing(response: _Response, method: str) -> tuple[str, int]:
    """How the body is delimited: ("none", 0), ("length", n), ("chunked", 0) or ("close", 0)."""
    if method == "HEAD" or response.status in (204, 304) or 100 <= response.status < 200:
        return "none", 0
    coding = response.header("transfer-encoding")
    if coding is not None:
        if coding.split(",")[-1].strip().lower() == "chunked":
            return "chunked", 0
        return "close", 0
    length = response.header("content-length")
    if length is not None:
        values = {v.strip() for v in length.split(",")}
        if len(values) != 1 or not next(iter(values)).isdigit():
            raise ProtocolError(f"an invalid Content-Length: {length!r}")
        return "length", int(values.pop())
    return "close", 0


def _read_body(
    connection: HTTPConnection, response: _Response, method: str, deadline: float
) -> tuple[bytes, bool, bool]:
    """The body (decompressed when the server compressed it), at most MAX_BODY_BYTES of it;
    whether there was more; and whether the whole message was read (the connection is
    then at the start of the next response)."""
    framing, length = _framing(response, method)
    encoding = (response.header("content-encoding") or "").strip().lower()
    decoder = zlib.decompressobj(wbits=zlib.MAX_WBITS | 32) if encoding in _COMPRESSED else None
    chunks: list[bytes] = []
    size = 0

    def take(data: bytes) -> bool:
        """Keep `data`; True once more than MAX_BODY_BYTES are kept."""
        nonlocal size
        if decoder is not None:
            data = decoder.decompress(data, MAX_BODY_BYTES + 1 - size)
        chunks.append(data)
        size += len(data)
        return size > MAX_BODY_BYTES

    def exactly(count: int) -> bool:
        """Read `count` bytes of body; True when the cap was passed (the rest is left unread)."""
        while count > 0:
            data = connection.read(deadline, min(count, _READ_SIZE))
            if not data:
                raise ProtocolError(f"the connection closed {count} bytes before the end of the body")
            count -= len(data)
            if take(data):
                return True
        return False

    capped = False
    if framing == "length":
        capped = exactly(length)
    elif framing == "chunked":
        while not capped:
            line = connection.read_line(deadline)
            size_field = (line or b"").split(b";", 1)[0].strip()
            try:
                chunk_size = int(size_field, 16)
            except ValueError:
                raise ProtocolError(f"an invalid chunk size: {(line or b'')[:100]!r}") from None
            if chunk_size == 0:
                while (line := connection.read_line(deadline)) not in (b"\r\n", b"\n"):
                    if line is None:
                        raise ProtocolError("the response ended in its trailer")
                break
            capped = exactly(chunk_size)
            if not capped and connection.read_line(deadline) not in (b"\r\n", b"\n"):
                raise ProtocolError("a chunk is not followed by a line break")
    elif framing == "close":
        while not capped and (data := connection.read(deadline, _READ_SIZE)):
            capped = take(data)
    if not capped and decoder is not None:
        chunks.append(decoder.flush())
    raw = b"".join(chunks)
    truncated = capped or len(raw) > MAX_BODY_BYTES
    return raw[:MAX_BODY_BYTES], truncated, framing != "close" and not capped


def _request(method: str, target: Target, head: list[tuple[str, str]], body: bytes | None) -> bytes:
    """The request's bytes: head and body in one write (one system call, one packet)."""
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
    lines = [f"{method} {target.path} HTTP/1.1", *(f"{name}: {value}" for name, value in head), "", ""]
    data = "\r\n".join(lines).encode("ascii")
    return data + body if body else data


def _exchange(
    env: Environment, target: Target, request: bytes, deadline: float
) -> tuple[HTTPConnection, _Response]:
    """Send the request and read the response's status and headers.

    A kept-alive connection that fails before any byte of the response (the server closed
    it while it was idle) is given up and the request sent once more on a new connection.
    """
    connection = env.take_connection(target.destination)
    reused = connection is not None
    while True:
        if connection is None:
            connection = HTTPConnection.open(env, target, deadline)
        try:
            connection.send(request, deadline)
            return connection, _read_head(connection, deadline)
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
    request = _request(
        method, target, _request_headers(target, method, headers, body, form=form, auth=auth), body
    )

    try:
        connection, response = _exchange(env, target, request, deadline)
        try:
            raw, truncated, complete = _read_body(connection, response, method, deadline)
        except BaseException:
            connection.close()
            raise
        if complete and response.keep_alive and connection.idle:
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
    response_headers: dict[str, str] = {}
    for name, value in response.headers:
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
