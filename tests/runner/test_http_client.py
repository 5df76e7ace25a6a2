"""The runner's HTTP client against a scripted raw HTTP/1.1 server: kept-alive connections
are reused only when a response was read to its end, a connection the server closed while
idle is retried once on a new one, timeouts bound the whole exchange, and https verifies
the certificate for the URL's host name while connecting to the checked address."""

from __future__ import annotations

import gzip
import ipaddress
import json
import socket
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conveyor.actions import ActionRequest, Environment, http, perform
from conveyor.actions.base import ActionError
from conveyor.actions.http import MAX_BODY_BYTES
from conveyor.netguard import NetworkPolicy, Target
from tests.runner.helpers import self_signed_certificate
from tests.runner.raw_http import RawHTTP, answer, post, response


def test_sequential_requests_share_one_kept_alive_connection(
    env: Environment, serve: Callable[..., RawHTTP]
) -> None:
    server = serve(
        lambda c, r, raw: answer(response(b'{"r":%d}' % r, headers=("Content-Type: application/json",)))
    )
    outcomes = [post(env, server.url("/hook")) for _ in range(4)]
    assert [o.output["body"] for o in outcomes if o.output] == [{"r": 0}, {"r": 1}, {"r": 2}, {"r": 3}]
    assert [len(requests) for requests in server.connections] == [4]


def test_chunked_204_and_head_responses_leave_the_connection_reusable(
    env: Environment, serve: Callable[..., RawHTTP]
) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"
    replies = [chunked, b"HTTP/1.1 204 No Content\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"]
    server = serve(lambda c, r, raw: answer(replies[r] if r < len(replies) else response()))
    first = post(env, server.url("/a"))
    second = post(env, server.url("/b"))
    third = perform(ActionRequest("webhook.send", {"url": server.url("/c"), "method": "HEAD"}, "k", 5.0), env)
    fourth = post(env, server.url("/d"))
    assert first.output is not None and first.output["body"] == "hello world"
    assert second.ok and third.ok and fourth.ok
    assert [len(requests) for requests in server.connections] == [4]


def test_a_connection_the_server_closed_while_idle_is_not_used_again(
    env: Environment, serve: Callable[..., RawHTTP]
) -> None:
    server = serve(lambda c, r, raw: ([response()], True))  # keep-alive announced, then closed
    assert post(env, server.url()).ok
    time.sleep(0.1)  # the server's FIN arrives
    assert post(env, server.url()).ok
    assert [len(requests) for requests in server.connections] == [1, 1]


def test_a_kept_alive_connection_that_fails_before_the_response_is_retried_once_on_a_new_one(
    env: Environment, serve: Callable[..., RawHTTP]
) -> None:
    # the first connection's second request is read, then the connection is closed unanswered:
    # what a client sees when the server closed an idle connection just as it was reused
    server = serve(lambda c, r, raw: None if (c, r) == (0, 1) else answer(response(b"fine")))
    assert post(env, server.url("/one")).ok
    outcome = post(env, server.url("/two"))
    assert outcome.ok, outcome.error
    assert outcome.output is not None and outcome.output["body"] == "fine"
    paths = [[raw.split(b" ")[1] for raw in requests] for requests in server.connections]
    assert paths == [[b"/one", b"/two"], [b"/two"]]


def test_a_new_connection_that_fails_before_the_response_is_not_retried(
    env: Environment, serve: Callable[..., RawHTTP]
) -> None:
    server = serve(lambda c, r, raw: None)
    outcome = post(env, server.url())
    assert not outcome.ok and outcome.retryable
    assert outcome.error is not None and outcome.error["type"] == "connection"
    assert [len(requests) for requests in server.connections] == [1]


def test_a_truncated_body_is_not_left_on_a_kept_alive_connection(
    env: Environment, serve: Callable[..., RawHTTP]
) -> None:
    big = b"x" * (MAX_BODY_BYTES * 2)
    server = serve(lambda c, r, raw: answer(response(big if (c, r) == (0, 0) else b"small")))
    first = post(env, server.url())
    second = post(env, server.url())
    assert first.output is not None and first.output["body_truncated"] is True
    assert len(first.output["body"]) == MAX_BODY_BYTES
    assert second.output is not None and second.output["body"] == "small"
    assert [len(requests) for requests in server.connections] == [1, 1]


def test_connection_close_from_the_server_is_respected(
    env: Environment, serve: Callable[..., RawHTTP]
) -> None:
    server = serve(lambda c, r, raw: answer(response(headers=("Connection: close",))))
    assert post(env, server.url()).ok and post(env, server.url()).ok
    assert [len(requests) for requests in server.connections] == [1, 1]


def test_an_expired_idle_connection_is_closed_instead_of_reused(
    env: Environment, serve: Callable[..., RawHTTP]
) -> None:
    env.keepalive_expiry_s = 0.0
    server = serve(lambda c, r, raw: answer(response()))
    assert post(env, server.url()).ok and post(env, server.url()).ok
    assert [len(requests) for requests in server.connections] == [1, 1]


def test_a_body_that_stalls_times_out_and_its_connection_is_dropped(
    env: Environment, serve: Callable[..., RawHTTP]
) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
    server = serve(
        lambda c, r, raw: ([head, b"12345", 1.0, b"67890"], False) if (c, r) == (0, 0) else answer(response())
    )
    started = time.monotonic()
    outcome = post(env, server.url(), timeout_s=0.3)
    assert time.monotonic() - started < 0.9
    assert not outcome.ok and outcome.retryable
    assert outcome.error is not None and outcome.error["type"] == "timeout"
    assert post(env, server.url()).ok
    assert [len(requests) for requests in server.connections] == [1, 1]


def test_a_body_that_trickles_in_past_the_timeout_times_out(
    env: Environment, serve: Callable[..., RawHTTP]
) -> None:
    # every piece arrives well within a socket timeout; the whole body does not arrive within the action's
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n"
    server = serve(lambda c, r, raw: ([head, *[piece for _ in range(20) for piece in (b"x", 0.05)]], False))
    started = time.monotonic()
    outcome = post(env, server.url(), timeout_s=0.4)
    assert time.monotonic() - started < 0.8
    assert outcome.error is not None and outcome.error["type"] == "timeout"


def test_headers_that_trickle_in_past_the_timeout_time_out(
    env: Environment, serve: Callable[..., RawHTTP]
) -> None:
    slow_headers = [piece for n in range(20) for piece in (b"X-Slow-%d: 1\r\n" % n, 0.05)]
    server = serve(lambda c, r, raw: ([b"HTTP/1.1 200 OK\r\n", *slow_headers, b"\r\n"], True))
    started = time.monotonic()
    outcome = post(env, server.url(), timeout_s=0.4)
    assert time.monotonic() - started < 0.8
    assert outcome.error is not None and outcome.error["type"] == "timeout"


def test_a_body_cut_short_is_a_connection_error(env: Environment, serve: Callable[..., RawHTTP]) -> None:
    server = serve(lambda c, r, raw: ([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"], True))
    outcome = post(env, server.url())
    assert not outcome.ok and outcome.retryable
    assert outcome.error is not None and outcome.error["type"] == "connection"


def test_request_head_and_response_headers(env: Environment, serve: Callable[..., RawHTTP]) -> None:
    server = serve(
        lambda c, r, raw: answer(
            response(b"{}", headers=("Content-Type: application/json", "X-Many: a", "x-many: b"))
        )
    )
    outcome = post(env, server.url("/p?q=a b"), headers={"Host": "evil.example", "Content-Length": "999"})
    assert outcome.output is not None and outcome.output["headers"]["x-many"] == "a, b"
    [[raw]] = server.connections
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /p?q=a%20b HTTP/1.1"
    headers = [tuple(line.split(": ", 1)) for line in lines[1:]]
    names = [name.lower() for name, _ in headers]
    assert ("Host", f"127.0.0.1:{server.port}") in headers and names.count("host") == 1
    assert ("Content-Length", str(len(body))) in headers and names.count("content-length") == 1
    assert ("User-Agent", "Conveyor") in headers
    assert "cookie" not in names and "accept-encoding" not in names


def test_a_compressed_response_is_decompressed(env: Environment, serve: Callable[..., RawHTTP]) -> None:
    body = gzip.compress(json.dumps({"ok": True}).encode())
    server = serve(
        lambda c, r, raw: answer(
            response(body, headers=("Content-Type: application/json", "Content-Encoding: gzip"))
        )
    )
    outcome = post(env, server.url(), headers={"Accept-Encoding": "gzip"})
    assert outcome.output is not None and outcome.output["body"] == {"ok": True}


def test_sixteen_threads_share_the_pool_without_opening_more_connections_than_threads(
    env: Environment, serve: Callable[..., RawHTTP]
) -> None:
    server = serve(lambda c, r, raw: answer(response()))
    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(lambda _: post(env, server.url()), range(300)))
    assert all(o.ok for o in outcomes)
    assert sum(len(requests) for requests in server.connections) == 300
    assert len(server.connections) <= 16


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate (its own CA) for the name localhost only: no IP address in it."""
    return self_signed_certificate(tmp_path, names=("localhost",))


def test_https_goes_to_the_checked_address_and_verifies_the_certificate_for_the_host_name(
    serve: Callable[..., RawHTTP], certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)[0][4][0]
    server_names: list[str | None] = []
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(*certificate)

    def record_server_name(sslobj: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        server_names.append(name)

    tls.sni_callback = record_server_name
    server = serve(lambda c, r, raw: answer(response()), tls=tls, host=first)
    policy = NetworkPolicy.parse(f"{first}/{ipaddress.ip_address(first).max_prefixlen}")

    untrusted_env = Environment.create(policy)
    try:
        untrusted = post(untrusted_env, server.url(host="localhost", scheme="https"))
    finally:
        untrusted_env.close()
    assert not untrusted.ok and untrusted.retryable
    assert untrusted.error is not None and "CERTIFICATE_VERIFY_FAILED" in untrusted.error["message"]

    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))  # trust the test CA
    env = Environment.create(policy)
    try:
        outcomes = [post(env, server.url("/tls", host="localhost", scheme="https")) for _ in range(3)]
        # the certificate names localhost, not the address connected to
        by_address = post(
            env, server.url("/tls", host=first if ":" not in first else f"[{first}]", scheme="https")
        )
    finally:
        env.close()
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    assert not by_address.ok and by_address.error is not None
    assert "CERTIFICATE_VERIFY_FAILED" in by_address.error["message"]
    assert server_names == ["localhost", "localhost", None]  # SNI: the URL's host name (none for an address)
    # the trusted requests went over one kept-alive connection, with the URL's Host header
    trusted = [requests for requests in server.connections if len(requests) == 3]
    assert len(trusted) == 1
    assert all(f"\r\nHost: localhost:{server.port}\r\n".encode() in raw for raw in trusted[0])


def test_interim_responses_are_skipped_on_a_kept_alive_connection(
    env: Environment, serve: Callable[..., RawHTTP]
) -> None:
    # a 100 Continue and a 103 Early Hints (with a header of its own) before the answer
    reply = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nX-Long: one two\r\nContent-Length: 2\r\n\r\nok"
    )
    server = serve(lambda c, r, raw: answer(reply))
    first = post(env, server.url("/a"))
    assert first.output is not None and first.output["headers"]["x-long"] == "one two"
    assert "link" not in first.output["headers"]  # the interim response's, not the answer's
    assert first.output["body"] == "ok"
    assert post(env, server.url("/b")).ok
    assert [len(requests) for requests in server.connections] == [2]


def test_a_folded_header_line_is_refused_and_its_connection_discarded(
    env: Environment, serve: Callable[..., RawHTTP]
) -> None:
    # obsolete line folding: refused (strict llhttp), not read by a lenient mode that would
    # also loosen the checks on header values
    folded = b"HTTP/1.1 200 OK\r\nX-Long: one\r\n two\r\nContent-Length: 2\r\n\r\nok"
    server = serve(lambda c, r, raw: answer(folded if (c, r) == (0, 0) else response()))
    first = post(env, server.url("/a"))
    assert not first.ok and first.retryable
    assert first.error is not None and first.error["type"] == "connection"
    assert post(env, server.url("/b")).ok
    assert [len(requests) for requests in server.connections] == [1, 1]


def test_a_body_without_a_length_runs_to_the_close_and_its_connection_is_not_kept(
    env: Environment, serve: Callable[..., RawHTTP]
) -> None:
    reply = b'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{"to": "the close"}'
    server = serve(lambda c, r, raw: ([reply], True))
    first = post(env, server.url())
    assert first.output is not None and first.output["body"] == {"to": "the close"}
    assert post(env, server.url()).ok
    assert [len(requests) for requests in server.connections] == [1, 1]


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/2 200 OK\r\n\r\n",  # not HTTP/1.x
        b"HTTP/1.1 2000 OK\r\n\r\n",  # not a three-digit status
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok",  # conflicting lengths
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # not a chunk size
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # closed before the end
    ],
)
def test_a_malformed_or_cut_response_is_a_retryable_connection_error(
    env: Environment, serve: Callable[..., RawHTTP], reply: bytes
) -> None:
    server = serve(lambda c, r, raw: ([reply], True))
    outcome = post(env, server.url())
    assert not outcome.ok and outcome.retryable
    assert outcome.error is not None and outcome.error["type"] == "connection"
    assert post(env, server.url()).retryable  # nothing of it was kept for the next request
    assert [len(requests) for requests in server.connections] == [1, 1]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET /x HTTP/1.1\r\nX-Smuggled:", "/"),
        ("POST", "/a b"),
        ("POST", "/a\r\nX-Smuggled: 1"),
        ("POST", "/é"),
    ],
)
def test_a_method_or_path_that_would_change_the_requests_framing_is_refused(method: str, path: str) -> None:
    # netguard.pin quotes every path and the actions send fixed methods: this is the last check
    target = Target("http", "127.0.0.1", "127.0.0.1", "127.0.0.1", 80, path)
    with pytest.raises(ActionError) as refused:
        http._request(method, target, [("Host", "127.0.0.1")], None)
    assert not refused.value.retryable and "cannot send the request" in str(refused.value)
    assert http._request("POST", Target("http", "h", "h", "127.0.0.1", 80, "/ok?a=1"), [], b"{}").startswith(
        b"POST /ok?a=1 HTTP/1.1\r\n"
    )
