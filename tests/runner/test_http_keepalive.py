"""Keep-alive in the runner's HTTP: connections are reused per destination (scheme, host
name, checked address, port), never across host names, and the SSRF check still runs on
every request."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from conveyor.actions import ActionRequest, Environment, perform
from conveyor.netguard import NetworkPolicy
from tests.runner.helpers import SHUTDOWN_POLL_S


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    seen: list[tuple[str, int]]
    cookies: list[str | None]


@pytest.fixture
def server() -> Iterator[_Server]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.server.seen.append((self.headers["Host"], self.client_address[1]))  # type: ignore[attr-defined]
            self.server.cookies.append(self.headers.get("Cookie"))  # type: ignore[attr-defined]
            self.send_response(200)
            self.send_header("Set-Cookie", "session=tenant-a; Path=/")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    httpd = _Server(("127.0.0.1", 0), Handler)
    httpd.seen = []
    httpd.cookies = []
    threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": SHUTDOWN_POLL_S}, daemon=True
    ).start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def _post(env: Environment, url: str) -> None:
    outcome = perform(ActionRequest("webhook.send", {"url": url, "body": {"a": 1}}, "k:1", 5.0), env)
    assert outcome.ok, outcome.error


def test_requests_to_one_destination_reuse_one_connection(server: _Server) -> None:
    env = Environment.create(NetworkPolicy.parse("127.0.0.1/32"))
    try:
        for _ in range(5):
            _post(env, f"http://127.0.0.1:{server.server_port}/hook")
    finally:
        env.close()
    ports = {port for _, port in server.seen}
    assert len(server.seen) == 5 and len(ports) == 1
    assert server.cookies == [None] * 5  # a cookie set by an endpoint is never sent back


def test_another_host_name_on_the_same_address_gets_its_own_connection(server: _Server) -> None:
    env = Environment.create(NetworkPolicy.parse("127.0.0.1/32,::1/128"))
    try:
        _post(env, f"http://127.0.0.1:{server.server_port}/a")
        _post(env, f"http://localhost:{server.server_port}/b")
        _post(env, f"http://127.0.0.1:{server.server_port}/c")
    finally:
        env.close()
    by_host: dict[str, set[int]] = {}
    for host, port in server.seen:
        by_host.setdefault(host.split(":")[0], set()).add(port)
    if "localhost" not in by_host:  # localhost resolved to ::1 first: nothing listens there
        pytest.skip("localhost does not resolve to 127.0.0.1 here")
    assert len(by_host["127.0.0.1"]) == 1 and len(by_host["localhost"]) == 1
    assert by_host["127.0.0.1"].isdisjoint(by_host["localhost"])


def test_a_kept_alive_destination_is_still_checked_on_every_request(server: _Server) -> None:
    env = Environment.create(NetworkPolicy.parse("127.0.0.1/32"))
    try:
        _post(env, f"http://127.0.0.1:{server.server_port}/ok")
        env.policy = NetworkPolicy()  # the allowlist is gone: the open connection must not help
        outcome = perform(
            ActionRequest("webhook.send", {"url": f"http://127.0.0.1:{server.server_port}/no"}, "k:2", 5.0),
            env,
        )
    finally:
        env.close()
    assert not outcome.ok and outcome.error is not None and outcome.error["type"] == "blocked_address"
    assert len(server.seen) == 1


def test_the_least_recently_used_destination_is_closed_beyond_the_limit(server: _Server) -> None:
    env = Environment.create(NetworkPolicy.parse("127.0.0.1/32"))
    env.max_destinations = 1
    try:
        _post(env, f"http://127.0.0.1:{server.server_port}/a")
        _post(env, f"http://127.1:{server.server_port}/b")  # another name for the same address
        assert len(env._idle) == 1
        _post(env, f"http://127.0.0.1:{server.server_port}/c")
    finally:
        env.close()
    ports = [port for _, port in server.seen]
    assert len(set(ports)) == 3  # the first destination's connection was closed, not reused
