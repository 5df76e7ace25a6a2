"""`conveyor serve` as a process and over HTTP: user tokens, signals, pipelining, start-up errors."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from conveyor.serve import ServeSettings, serve_in_thread, tokens
from tests.conftest import free_port
from tests.e2e.helpers import publish_by_hand
from tests.e2e.test_serve_hardening import read_until_closed, run_request, statuses

Conn = psycopg.Connection[dict[str, Any]]
SECRET = "k" * 48


@pytest.fixture
def server(db_url: str, conn: Conn) -> Iterator[str]:
    conn.execute("insert into conveyor.tenants (tenant_id, name) values ('acme', 'Acme')")
    settings = ServeSettings(db_url, "127.0.0.1", 0, pool_size=2, token_secret=SECRET)
    with serve_in_thread(settings) as running:
        yield running.url


def test_a_user_token_is_verified_and_every_wrong_one_gets_401_naming_why(server: str) -> None:
    good = tokens.sign(SECRET, "acme", "u-1", 60)
    me = httpx.get(server + "/api/me", headers={"Authorization": f"Bearer {good}"})
    assert me.status_code == 200
    assert me.json() | {"expires_at": None} == {
        "tenant": "acme",
        "user": "u-1",
        "operator": False,
        "expires_at": None,
    }
    # A browser's EventSource cannot send headers: the query parameter does as well.
    assert httpx.get(server + "/api/me", params={"access_token": good}).status_code == 200
    for token, error in (
        (None, "missing token"),
        (tokens.sign(SECRET, "acme", "u-1", 60, now=time.time() - 120), "token expired at"),
        (tokens.sign("z" * 48, "acme", "u-1", 60), "token signature does not match"),
        (tokens.sign(SECRET, "nobody", "u-1", 60), "token names tenant 'nobody', which does not exist"),
    ):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = httpx.get(server + "/api/me", headers=headers)
        assert response.status_code == 401 and error in response.json()["error"], response.text
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_without_a_token_secret_token_routes_say_so(db_url: str) -> None:
    with serve_in_thread(ServeSettings(db_url, "127.0.0.1", 0, pool_size=1)) as running:
        response = httpx.get(running.url + "/api/me", headers={"Authorization": "Bearer x"})
    assert response.status_code == 503 and "CONVEYOR_TOKEN_SECRET" in response.json()["error"]


def test_unknown_routes_and_methods_get_json_errors(server: str) -> None:
    missing = httpx.get(server + "/nope")
    assert (missing.status_code, missing.json()) == (404, {"error": "not found"})
    wrong = httpx.get(server + "/api/workflows/by-hand/runs")
    assert wrong.status_code == 405 and wrong.json() == {"error": "GET is not allowed here; use POST"}


def test_a_bad_request_pipelined_behind_a_good_one_is_answered_after_it(db_url: str, conn: Conn) -> None:
    key = publish_by_hand(conn)
    with serve_in_thread(ServeSettings(db_url, "127.0.0.1", 0, pool_size=1)) as running:
        port = int(running.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            bad = b"POST /api/workflows/by-hand/runs HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n"
            sock.sendall(run_request(key, b'{"who": "first"}') + bad)
            raw = read_until_closed(sock, 5)
    assert statuses(raw) == [202, 400]
    assert b"Content-Length must be a non-negative integer" in raw


def start_serve(db_url: str, port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "conveyor.cli", "serve", "--database-url", db_url, "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return process
        except httpx.TransportError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, "conveyor serve did not start"
        time.sleep(0.1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_lets_the_request_in_flight_finish_then_exits_0(db_url: str, conn: Conn, sig: int) -> None:
    key = publish_by_hand(conn)
    port = free_port()
    process = start_serve(db_url, port)
    answers: list[int] = []
    try:
        # Hold the API key's row, so the manual run waits in the database while the signal comes.
        with psycopg.connect(db_url, row_factory=dict_row) as blocker:
            blocker.execute("select * from conveyor.api_keys for update")

            def request() -> None:
                response = httpx.post(
                    f"http://127.0.0.1:{port}/api/workflows/by-hand/runs",
                    json={"who": "Ada"},
                    headers={"Authorization": f"Bearer {key}"},
                    timeout=20,
                )
                answers.append(response.status_code)

            in_flight = threading.Thread(target=request)
            in_flight.start()
            deadline = time.monotonic() + 10
            while not conn.execute(
                "select 1 from pg_stat_activity where wait_event_type = 'Lock' and application_name = 'conveyor-serve'"
            ).fetchone():
                assert time.monotonic() < deadline, "the request never reached the database"
                time.sleep(0.05)
            process.send_signal(sig)
            time.sleep(0.5)
            assert process.poll() is None, "the server stopped before its request was answered"
            with pytest.raises(httpx.TransportError):  # no longer accepting
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
        in_flight.join(20)
        assert answers == [202]
        assert process.wait(15) == 0
        assert b"Traceback" not in (process.stderr.read() if process.stderr else b"")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_port_in_use_is_a_clear_error(db_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "conveyor.cli", "serve", "--database-url", db_url, "--port", str(port)],
            capture_output=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert f"error: cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr.decode()
