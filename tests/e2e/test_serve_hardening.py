"""`conveyor serve` against a hostile client, over raw sockets.

The server runs as its own process (`conveyor serve` with small limits) and is spoken to
byte by byte, so these tests hold whatever HTTP stack serves the routes: they check only
what a client sees (answers, closed connections, timings) and what the server process
holds (its peak memory and threads, from /proc).
"""

from __future__ import annotations

import json
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.conftest import Server, free_port
from tests.e2e.helpers import publish_by_hand

Conn = psycopg.Connection[dict[str, Any]]

REQUEST_TIMEOUT_S = 1.5
MAX_CONNECTIONS = 4
MAX_BODY_BYTES = 65536


@dataclass
class Serve:
    port: int
    process: subprocess.Popen[bytes]

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        return sock

    def exchange(self, raw: bytes, *, wait_s: float = 5) -> bytes:
        """Send raw bytes (keeping the connection open for writing) and read until the
        server closes it or wait_s passes."""
        with self.connect() as sock:
            sock.sendall(raw)
            return read_until_closed(sock, wait_s)

    def healthy(self) -> bool:
        try:
            return statuses(self.exchange(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")) == [200]
        except OSError:
            return False

    def proc_status(self, field: str) -> int:
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise AssertionError(f"{field} not in /proc/{self.process.pid}/status")


def read_until_closed(sock: socket.socket, wait_s: float) -> bytes:
    deadline = time.monotonic() + wait_s
    data = b""
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            break
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def statuses(raw: bytes) -> list[int]:
    """The status codes of the HTTP answers in raw (bodies are JSON, so no false matches)."""
    return [int(code) for code in re.findall(rb"HTTP/1\.[01] ([0-9]{3}) ", raw)]


def answer(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body) if body else None


@contextmanager
def running_serve(db_url: str, request_timeout_s: float = REQUEST_TIMEOUT_S) -> Iterator[Serve]:
    port = free_port()
    command = [
        sys.executable, "-m", "conveyor.cli", "serve", "--database-url", db_url, "--port", str(port),
        "--pool-size", "2", "--request-timeout", str(request_timeout_s),
        "--max-connections", str(MAX_CONNECTIONS), "--max-body-bytes", str(MAX_BODY_BYTES),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = Serve(port, process)
    try:
        deadline = time.monotonic() + 20
        while not server.healthy():
            assert process.poll() is None and time.monotonic() < deadline, "conveyor serve did not start"
            time.sleep(0.1)
        yield server
    finally:
        process.kill()
        process.wait(10)


@pytest.fixture
def serve(db_url: str) -> Iterator[Serve]:
    """A server of its own, for tests that watch the process (memory, threads, timings)."""
    with running_serve(db_url) as server:
        yield server


@dataclass
class Shared:
    serve: Serve
    conn: Conn
    key: str

    def executions(self) -> int:
        """Executions and events: a request that ran would have made at least one of them."""
        row = self.conn.execute(
            "select (select count(*) from conveyor.executions) + (select count(*) from conveyor.events) as n"
        ).fetchone()
        assert row is not None
        return int(row["n"])


@pytest.fixture(scope="module")
def shared(pg_server: Server, template_db: str) -> Iterator[Shared]:
    """One server and database for the tests that only look at answers, with a manual
    workflow `by-hand` of tenant acme and an API key that may run it."""
    name = "serve_hardening"
    with pg_server.janitor(name, template=template_db):
        url = pg_server.url(name)
        with (
            psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn,
            running_serve(url) as server,
        ):
            yield Shared(server, conn, publish_by_hand(conn))


def run_request(key: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"POST /api/workflows/by-hand/runs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def test_valid_requests_are_served_one_after_another_on_a_kept_alive_connection(shared: Shared) -> None:
    before = shared.executions()
    with shared.serve.connect() as sock:
        sock.sendall(run_request(shared.key, b'{"who": "Ada"}'))
        time.sleep(0.3)
        sock.sendall(run_request(shared.key, b'{"who": "Grace"}', "Connection: close\r\n"))
        raw = read_until_closed(sock, 5)
    assert statuses(raw) == [202, 202]
    assert shared.executions() == before + 2


def test_a_body_too_large_is_refused_before_the_client_is_asked_to_send_it(shared: Shared) -> None:
    with shared.serve.connect() as sock:
        sock.sendall(
            f"POST /api/workflows/by-hand/runs HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n"
            "Expect: 100-continue\r\n\r\n".encode()
        )
        raw = read_until_closed(sock, 5)
    assert statuses(raw) == [413]  # no "100 Continue" first
    assert answer(raw)[1]["connection"] == "close"


def test_a_negative_content_length_is_answered_without_reading_the_rest(serve: Serve) -> None:
    before = serve.proc_status("VmHWM")
    with serve.connect() as sock:
        sock.sendall(b"POST /api/workflows/by-hand/runs HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n")
        # A reader that trusted the length would read until the end of the stream and never answer.
        sent = 0
        chunk = b"x" * 1024 * 1024
        try:
            for _ in range(32):
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass  # the server answered and closed the connection
        raw = read_until_closed(sock, 5)
    status, headers, body = answer(raw)
    assert status == 400 and "Content-Length must be a non-negative integer" in body["error"]
    assert headers["connection"] == "close"
    # Whatever was sent, the server's peak memory did not grow by it.
    assert serve.proc_status("VmHWM") - before < 8 * 1024, f"sent {sent} bytes"


@pytest.mark.parametrize(
    ("length_header", "status", "error"),
    [
        ("Content-Length: abc\r\n", 400, "Content-Length must be a non-negative integer, not 'abc'"),
        ("Content-Length: +5\r\n", 400, "Content-Length must be a non-negative integer"),
        ("Content-Length: 99999999999999999999999\r\n", 413, f"larger than {MAX_BODY_BYTES} bytes"),
        ("Content-Length: 2\r\nContent-Length: 2\r\n", 400, "more than one Content-Length"),
        ("", 411, "POST needs a Content-Length header"),
        (f"Content-Length: {MAX_BODY_BYTES + 1}\r\n", 413, f"larger than {MAX_BODY_BYTES} bytes"),
    ],
)
def test_a_bad_or_missing_content_length_is_refused_and_the_connection_closed(
    shared: Shared, length_header: str, status: int, error: str
) -> None:
    raw = shared.serve.exchange(
        f"POST /api/workflows/by-hand/runs HTTP/1.1\r\nHost: x\r\n{length_header}\r\n".encode()
    )
    got, headers, body = answer(raw)
    assert (got, headers["connection"]) == (status, "close")
    assert error in body["error"]
    assert statuses(raw) == [status]  # answered once, then closed (read_until_closed saw the end)


def test_headers_beyond_the_limit_get_431_before_they_are_all_read(shared: Shared) -> None:
    def request(headers: int) -> bytes:
        padding = "".join(f"X-Pad-{i}: {'a' * 4000}\r\n" for i in range(headers))
        return f"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{padding}\r\n".encode()

    assert statuses(shared.serve.exchange(request(14))) == [200]  # 56 KB: within 64 KiB
    status, headers, body = answer(shared.serve.exchange(request(40)))  # 160 KB
    assert (status, headers["connection"]) == (431, "close")
    assert body["error"] == "request line and headers exceed 65536 bytes (--max-header-bytes)"


def smuggling(key: str) -> tuple[bytes, bytes]:
    """A manual run with key, and the same as one chunk of a chunked body: (run, chunks)."""
    smuggled = run_request(key, b'{"who": "smuggled"}')
    return smuggled, f"{len(smuggled):x}\r\n".encode() + smuggled + b"\r\n0\r\n\r\n"


def test_a_request_smuggled_in_a_chunked_body_is_not_run(shared: Shared) -> None:
    before = shared.executions()
    _, chunks = smuggling(shared.key)
    # Transfer-Encoding and a Content-Length covering only the chunk-size line: a proxy that
    # reads the chunks sees one request; a server that read the length would see two.
    size_line = chunks.index(b"\r\n") + 2
    raw = shared.serve.exchange(
        f"POST /api/workflows/nope/runs HTTP/1.1\r\nHost: x\r\nContent-Length: {size_line}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n".encode()
        + chunks
    )
    assert statuses(raw) == [501]
    _, headers, answer_body = answer(raw)
    assert headers["connection"] == "close" and "Transfer-Encoding is not supported" in answer_body["error"]
    assert shared.executions() == before


def test_a_request_smuggled_behind_a_route_that_reads_no_body_is_not_run(shared: Shared) -> None:
    before = shared.executions()
    smuggled, chunks = smuggling(shared.key)
    raw = shared.serve.exchange(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
    )
    assert statuses(raw) == [501]
    # A body sent with Content-Length to a route that ignores it is still read, not run.
    raw = shared.serve.exchange(
        f"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: {len(smuggled)}\r\n\r\n".encode() + smuggled
    )
    assert statuses(raw) == [200]
    assert shared.executions() == before


def test_a_slow_client_is_cut_off_while_another_is_served(serve: Serve) -> None:
    slow = serve.connect()
    started = time.monotonic()
    served_meanwhile = None
    closed_after = None
    last_words: list[int] = []
    with slow:
        slow.sendall(b"POST /api/workflows/by-hand/runs HTTP/1.1\r\n")
        header = b"X-Slow: " + b"a" * 100
        for i in range(100):  # a byte every 0.1 s: never idle long enough for a per-read timeout
            try:
                slow.sendall(header[i : i + 1])
            except OSError:
                closed_after = time.monotonic() - started
                break
            ready, _, _ = select.select([slow], [], [], 0.1)
            if ready:
                closed_after = time.monotonic() - started
                last_words = statuses(read_until_closed(slow, 1))
                break
            if served_meanwhile is None and i == 3:
                served_meanwhile = serve.healthy()
    assert served_meanwhile is True
    assert closed_after is not None, "the slow client was never cut off"
    assert REQUEST_TIMEOUT_S - 0.2 < closed_after < REQUEST_TIMEOUT_S + 2.0
    assert last_words in ([408], [])  # told why, or just closed


def test_open_connections_are_bounded(db_url: str) -> None:
    # A long request timeout, so the held connections are not cut off during the test.
    with running_serve(db_url, request_timeout_s=60) as serve:
        threads_before = serve.proc_status("Threads")
        held = [serve.connect() for _ in range(MAX_CONNECTIONS)]
        try:
            time.sleep(0.2)  # let the server accept them all
            refused = []
            for _ in range(20):
                started = time.monotonic()
                with serve.connect() as extra:
                    raw = read_until_closed(extra, 2)
                refused.append((statuses(raw), time.monotonic() - started < 1))
            assert refused == [([503], True)] * 20
            assert serve.proc_status("Threads") <= threads_before + MAX_CONNECTIONS
        finally:
            for sock in held:
                sock.close()
        time.sleep(0.2)
        assert serve.healthy()


def test_deep_json_is_refused_quickly(shared: Shared) -> None:
    before = shared.executions()
    depth = 30000  # within the body limit; json.loads would recurse past Python's limit
    started = time.monotonic()
    raw = shared.serve.exchange(run_request(shared.key, b"[" * depth + b"]" * depth, "Connection: close\r\n"))
    status, _, body = answer(raw)
    assert status == 400 and "nested deeper than 64 levels" in body["error"]
    assert time.monotonic() - started < 2
    nested = b'{"a": ' * 63 + b"1" + b"}" * 63  # with the outer object, the limit itself: fine
    status, _, body = answer(
        shared.serve.exchange(run_request(shared.key, b'{"who": ' + nested + b"}", "Connection: close\r\n"))
    )
    assert status == 202, body
    assert shared.executions() == before + 1


@pytest.mark.parametrize(
    ("request_bytes", "error"),
    [
        (b'{"who": "\\u0000"}', "\\u0000"),
        (b'{"who": "\\ud800"}', "unpaired UTF-16 surrogate"),
        (b'{"who": "\xff"}', "not valid UTF-8"),
        (b'{"who": "a\x00"}', "not valid JSON"),
        (b'{"who": 1e999}', "out of range"),
        (b'{"who": NaN}', "NaN is not JSON"),
    ],
)
def test_nul_invalid_utf8_and_unstorable_json_get_400(
    shared: Shared, request_bytes: bytes, error: str
) -> None:
    before = shared.executions()
    status, _, body = answer(
        shared.serve.exchange(run_request(shared.key, request_bytes, "Connection: close\r\n"))
    )
    assert status == 400 and error in body["error"]
    assert shared.executions() == before


@pytest.mark.parametrize(
    ("header", "error"),
    [
        (b"X-Note: a\x00b\r\n", "header X-Note contains a NUL"),
        (b"X-Note: \xff\xfe\r\n", "X-Note is not valid UTF-8"),
    ],
)
def test_nul_or_invalid_utf8_in_a_header_gets_400(shared: Shared, header: bytes, error: str) -> None:
    before = shared.executions()
    raw = shared.serve.exchange(
        run_request(shared.key, b"{}", "Connection: close\r\n").replace(
            b"Host: x\r\n", b"Host: x\r\n" + header
        )
    )
    status, _, body = answer(raw)
    assert status == 400 and error in body["error"]
    assert shared.executions() == before


def test_malformed_request_lines_are_answered_and_the_server_lives_on(shared: Shared) -> None:
    serve = shared.serve
    for raw in (
        b"NOT A REQUEST\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST /\x00 HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        b"\x00\xff\r\n\r\n",
    ):
        got = statuses(serve.exchange(raw))
        assert len(got) == 1 and got[0] in (400, 404, 505), (raw, got)
    assert serve.process.poll() is None
    assert serve.healthy()
