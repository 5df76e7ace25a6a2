"""`conveyor serve`: the inbound HTTP listener, a thin shell over SQL functions.

Routes (every decision is made in SQL; this only forwards and answers):
  ANY  /hooks/<path token>                 → conveyor.receive_webhook(...)
  POST /api/workflows/<slug>/runs          → conveyor.http_trigger(<bearer key>, slug, body)
  GET  /healthz                            → 200 when the database answers

The standard library's threading HTTP server is enough here: requests are small, each
is one SQL call, and concurrency is bounded by the connection pool. What a hostile client
sends is bounded before it costs anything (`Limits`, docs/limits.md "Inbound HTTP"): the
framing (Content-Length only, no Transfer-Encoding), the body size before it is read, the
time a request may take to arrive, the open connections, and the JSON nesting depth.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
import socket
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

log = logging.getLogger("conveyor.serve")

_HOOK = re.compile(r"^/hooks/([A-Za-z0-9_-]{32,})/?$")
_RUN = re.compile(r"^/api/workflows/([a-z0-9][a-z0-9-]*)/runs/?$")
_LENGTH = re.compile(r"[0-9]+")
# A JSON string (possibly unterminated), removed whole so the brackets inside do not count.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_BODY_METHODS = {"POST", "PUT", "PATCH"}
LINGER_S = 1.0
LINGER_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Bounds on what one client can make the server hold (defaults: docs/limits.md)."""

    max_body_bytes: int = 10 * 1024 * 1024
    max_connections: int = 64
    request_timeout_s: float = 10.0
    max_json_depth: int = 64
    max_header_bytes: int = 64 * 1024


class ConveyorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self, address: tuple[str, int], pool: ConnectionPool[Any], limits: Limits | None = None
    ) -> None:
        self.limits = limits or Limits()
        # One thread per open connection, at most max_connections of them.
        self._slots = threading.BoundedSemaphore(self.limits.max_connections)
        super().__init__(address, Handler)
        self.pool = pool

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("connection refused: too many open connections", extra={"client": client_address[0]})
            answer_raw(
                request,
                503,
                f"too many open connections (limit {self.limits.max_connections}, --max-connections)",
            )
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class RequestTimeout(Exception):
    """The request did not arrive within the request timeout."""


class HeadersTooLarge(Exception):
    """The request line and headers are longer than max_header_bytes."""


class _DeadlineReader(io.RawIOBase):
    """The socket's bytes; every read waits at most until the current request's deadline,
    so a client sending a byte a second is cut off too, not only one that sends nothing.
    While `allowance` is set (the request line and headers), at most that many bytes more."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock
        self.deadline = math.inf
        self.received = 0
        self.allowance: int | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise RequestTimeout
        if self.allowance is not None:
            if self.allowance <= 0:
                raise HeadersTooLarge
            buffer = memoryview(buffer)[: self.allowance]
        self._sock.settimeout(left)
        try:
            n = self._sock.recv_into(buffer)
        except TimeoutError:
            raise RequestTimeout from None
        self.received += n
        if self.allowance is not None:
            self.allowance -= n
        return n


def answer_raw(sock: socket.socket, status: int, error: str) -> None:
    """A complete error answer written straight to the socket, then the connection closes."""
    payload = json.dumps({"error": error}).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    )
    try:
        sock.settimeout(1.0)
        sock.sendall(head.encode() + payload)
    except OSError:
        pass


def linger(sock: socket.socket) -> None:
    """Close after an answer the client may still be sending a body to: closing with
    unread bytes resets the connection, which can destroy the answer before it is read,
    so first end our side and discard what arrives for a moment (at most LINGER_*)."""
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + LINGER_S
        drained = 0
        while drained < LINGER_BYTES and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                break
            drained += len(chunk)
    except OSError:
        pass


class BadRequest(Exception):
    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


class Handler(BaseHTTPRequestHandler):
    server: ConveyorHTTPServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Reads go through the deadline; the stream makefile() opened is closed, not leaked.
        self.rfile.close()
        self._reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self._reader)
        self._unread_body = False
        self._length = 0

    def finish(self) -> None:
        super().finish()
        if self._unread_body:
            linger(self.connection)

    def handle_one_request(self) -> None:
        # The whole request (line, headers, body) must arrive within the timeout; an idle
        # kept-alive connection is closed when it runs out.
        self._reader.deadline = time.monotonic() + self.server.limits.request_timeout_s
        self._reader.received = 0
        self._reader.allowance = self.server.limits.max_header_bytes
        try:
            super().handle_one_request()
        except HeadersTooLarge:
            limit = self.server.limits.max_header_bytes
            answer_raw(
                self.connection, 431, f"request line and headers exceed {limit} bytes (--max-header-bytes)"
            )
            self.close_connection = True
            self._unread_body = True
        except RequestTimeout:
            self.close_connection = True
            if self._reader.received:
                timeout = self.server.limits.request_timeout_s
                answer_raw(
                    self.connection,
                    408,
                    f"the request did not arrive within {timeout:g} s (--request-timeout)",
                )

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The standard library's answers to a malformed request line or headers, as JSON,
        # with a status line even when the request's version was never read.
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = "HTTP/1.1"
        self._answer(code, {"error": message or HTTPStatus(code).phrase}, close=True)

    def parse_request(self) -> bool:
        # Every request's framing is checked, whatever its route: one that reached no route
        # must not leave a body behind to be read as the next request.
        if not super().parse_request():
            return False
        self._reader.allowance = None  # what follows is the body, bounded by its own limit
        return self._framing_is_valid()

    def handle_expect_100(self) -> bool:
        # Refuse a body that would be refused anyway before asking the client to send it.
        return self._framing_is_valid() and super().handle_expect_100()

    def _framing_is_valid(self) -> bool:
        try:
            self._length = self._body_length()
        except BadRequest as exc:
            self._answer(exc.status, {"error": exc.error}, close=True)
            return False
        return True

    def do_GET(self) -> None:
        if self.path == "/healthz":
            if self._read_body(self._length) is None:
                self.close_connection = True
                return
            try:
                with self.server.pool.connection(timeout=5) as conn:
                    conn.execute("select 1")
                self._answer(200, {"status": "ok"})
            except (psycopg.Error, TimeoutError) as exc:
                self._answer(503, {"status": "unavailable", "error": str(exc).splitlines()[0]})
            return
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        path = self.path.split("?", 1)[0]
        body = self._read_body(self._length)
        if body is None:  # the client went away mid-body
            self.close_connection = True
            return
        try:
            headers = self._header_map()
        except BadRequest as exc:
            self._answer(exc.status, {"error": exc.error}, close=True)
            return
        hook = _HOOK.match(path)
        run = _RUN.match(path)
        try:
            depth = self.server.limits.max_json_depth
            if (hook or run) and json_too_deep(body, depth):
                error = f"body is JSON nested deeper than {depth} levels (the limit, --max-json-depth)"
                status, answer = 400, {"error": error}
            elif hook:
                status, answer = self._call(
                    "select status, body from conveyor.receive_webhook(%s, %s, %s, %s, %s)",
                    (hook.group(1), self.command, Jsonb(headers), body, self.client_address[0]),
                )
            elif run and self.command == "POST":
                status, answer = self._manual_run(unquote(run.group(1)), body, headers)
            else:
                status, answer = 404, {"error": "not found"}
        except psycopg.Error as exc:
            log.error("request failed", extra={"path": path, "error": str(exc).strip().splitlines()[0]})
            status, answer = 500, {"error": "internal error"}
        except Exception:
            # A bug must still answer, not drop the connection.
            log.exception("request failed", extra={"path": path})
            status, answer = 500, {"error": "internal error"}
        self._answer(status, answer)

    def _body_length(self) -> int:
        """The body's length from the headers, refused unless it is one plain Content-Length."""
        if self.headers.get("Transfer-Encoding") is not None:
            raise BadRequest(501, "Transfer-Encoding is not supported; send the body with a Content-Length")
        lengths = self.headers.get_all("Content-Length") or []
        if len(lengths) > 1:
            raise BadRequest(400, "more than one Content-Length header")
        if not lengths:
            if self.command in _BODY_METHODS:
                raise BadRequest(411, f"{self.command} needs a Content-Length header (0 for no body)")
            return 0
        value = lengths[0].strip(" \t")
        if not _LENGTH.fullmatch(value):
            raise BadRequest(400, f"Content-Length must be a non-negative integer, not {value[:40]!r}")
        limit = self.server.limits.max_body_bytes
        if len(value.lstrip("0")) > 18 or int(value) > limit:
            raise BadRequest(413, f"body is larger than {limit} bytes (the server's limit, --max-body-bytes)")
        return int(value)

    def _read_body(self, length: int) -> bytes | None:
        body = self.rfile.read(length) if length else b""
        return body if len(body) == length else None

    def _header_map(self) -> dict[str, str]:
        """Lower-case names → values as UTF-8 text; a NUL or invalid UTF-8 is refused."""
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            try:
                # http.client decoded the bytes as latin-1; undo that to read them as UTF-8.
                text = value.encode("latin-1").decode("utf-8")
            except UnicodeError:
                raise BadRequest(400, f"header {name} is not valid UTF-8") from None
            if "\x00" in text or "\x00" in name:
                raise BadRequest(400, f"header {name} contains a NUL character")
            headers[name.lower()] = text
        return headers

    def _manual_run(self, slug: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        authorization = headers.get("authorization", "")
        key = authorization[7:].strip() if authorization.lower().startswith("bearer ") else ""
        try:
            data = parse_json_object(body) if body else {}
        except BadRequest as exc:
            return exc.status, {"error": exc.error}
        return self._call(
            "select status, body from conveyor.http_trigger(%s, %s, %s)", (key, slug, Jsonb(data))
        )

    def _call(self, query: str, params: tuple[Any, ...]) -> tuple[int, Any]:
        with self.server.pool.connection() as conn:
            row = conn.execute(query, params).fetchone()
        assert row is not None
        return int(row[0]), row[1]

    def _answer(self, status: int, body: Any, *, close: bool = False) -> None:
        payload = json.dumps(body).encode()
        # A client that does not read its answer is dropped after the timeout, like a slow sender.
        self.connection.settimeout(self.server.limits.request_timeout_s)
        self.send_response(status, HTTPStatus(status).phrase)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
            self._unread_body = True
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        log.info("http", extra={"client": self.client_address[0], "request": format % args})


def json_too_deep(body: bytes, limit: int) -> bool:
    """Whether the body's arrays and objects nest deeper than limit, counted without
    recursion and without parsing (json.loads would recurse, PostgreSQL's parser too)."""
    if body.lstrip()[:1] not in (b"[", b"{") or body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth = 0
    for bracket in _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS):
        if bracket in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text[:40]} is out of range")
    return number


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The manual run's body as a JSON object PostgreSQL can store (call after json_too_deep)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(400, f"body is not valid UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(text, parse_float=_finite, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise BadRequest(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest(400, "body must be a JSON object")
    # jsonb stores neither NUL nor unpaired surrogates (both are valid JSON escapes).
    pending: list[Any] = [data]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, str):
            if "\x00" in value:
                raise BadRequest(400, "body contains \\u0000, which cannot be stored")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise BadRequest(400, "body contains an unpaired UTF-16 surrogate escape") from None
    return data


def make_server(
    database_url: str, host: str, port: int, pool_size: int = 8, limits: Limits | None = None
) -> ConveyorHTTPServer:
    pool: ConnectionPool[Any] = ConnectionPool(
        database_url, min_size=1, max_size=pool_size, kwargs={"autocommit": True}, open=True
    )
    return ConveyorHTTPServer((host, port), pool, limits)


def serve_in_thread(server: ConveyorHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="conveyor-serve", daemon=True)
    thread.start()
    return thread
