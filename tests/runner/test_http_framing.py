"""What the runner's HTTP client decides about a response's framing on top of llhttp
(actions/http_response.py), against a scripted raw server: a HEAD response ends with its
head, bytes beyond a response keep its connection from being reused, a body without a
length runs to the close, trailers are dropped, and what llhttp would take but the client
does not (another HTTP version, a 101, an oversized head) is a clean failure."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from conveyor.actions import ActionRequest, Environment, Outcome, perform
from tests.runner.raw_http import RawHTTP, answer, post, response


def head(env: Environment, url: str) -> Outcome:
    return perform(ActionRequest("webhook.send", {"url": url, "method": "HEAD"}, "k:1", 5.0), env)


def connections(server: RawHTTP) -> list[int]:
    return [len(requests) for requests in server.connections]


def first_then_next(serve: Callable[..., RawHTTP], reply: bytes) -> RawHTTP:
    """A server that answers the first request with `reply`, every later one with "next"."""
    return serve(lambda c, r, raw: answer(reply if (c, r) == (0, 0) else response(b"next")))


def assert_next(env: Environment, server: RawHTTP) -> None:
    """The next request gets its own answer, whatever the first left on its connection."""
    outcome = post(env, server.url("/next"))
    assert outcome.output is not None and outcome.output["body"] == "next", outcome


@pytest.mark.parametrize(
    "framing", [b"Content-Length: 100", b"Transfer-Encoding: chunked", b"Content-Type: text/plain"]
)
def test_a_head_response_ends_with_its_head_and_its_connection_is_reused(
    env: Environment, serve: Callable[..., RawHTTP], framing: bytes
) -> None:
    # the headers describe the body a GET would have had: none follows
    reply = b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n\r\n"
    server = first_then_next(serve, reply)
    first = head(env, server.url("/h"))
    assert first.ok and first.output is not None and first.output["body"] == ""
    assert_next(env, server)
    # with a length or chunked, the server keeps the connection; without, llhttp would
    # wait for the close, and the client does not reuse it
    assert connections(server) == ([2] if framing != b"Content-Type: text/plain" else [1, 1])


@pytest.mark.parametrize(
    ("method", "reply", "body"),
    [
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", ""),  # a body it should not send
        ("POST", response(b"first") + response(b"stray"), "first"),  # two answers to one request
        ("POST", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokjunk", "ok"),
        ("POST", b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nokjunk", "ok"),
    ],
    ids=["head-with-body", "stray-response", "junk", "junk-http-1.0"],
)
def test_bytes_beyond_a_response_are_never_read_as_the_next_requests(
    env: Environment, serve: Callable[..., RawHTTP], method: str, reply: bytes, body: str
) -> None:
    server = first_then_next(serve, reply)
    first = perform(
        ActionRequest("webhook.send", {"url": server.url("/a"), "method": method}, "k:1", 5.0), env
    )
    assert first.ok and first.output is not None and first.output["body"] == body
    assert_next(env, server)  # on a new connection: the first was discarded
    assert connections(server) == [1, 1]


@pytest.mark.parametrize(
    ("reply", "kept"),
    [
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", True),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", False),
    ],
)
def test_a_connection_is_kept_when_the_server_keeps_it(
    env: Environment, serve: Callable[..., RawHTTP], reply: bytes, kept: bool
) -> None:
    server = serve(lambda c, r, raw: answer(reply))
    assert post(env, server.url("/a")).ok and post(env, server.url("/b")).ok
    assert connections(server) == ([2] if kept else [1, 1])


def test_a_body_whose_last_transfer_coding_is_not_chunked_runs_to_the_close(
    env: Environment, serve: Callable[..., RawHTTP]
) -> None:
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nto the close"
    server = serve(lambda c, r, raw: ([reply, 0.05, b", in two pieces"], True))
    outcome = post(env, server.url())
    assert outcome.output is not None and outcome.output["body"] == "to the close, in two pieces"


def test_trailer_fields_are_dropped_and_the_connection_reused(
    env: Environment, serve: Callable[..., RawHTTP]
) -> None:
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-Trailer: 1\r\n\r\n"
    server = serve(lambda c, r, raw: answer(reply))
    first = post(env, server.url("/a"))
    assert first.output is not None and first.output["body"] == "ok"
    assert "x-trailer" not in first.output["headers"]
    assert post(env, server.url("/b")).ok
    assert connections(server) == [2]


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok",  # llhttp reads it; the client does not
        b"HTTP/0.9 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",  # then the close: no final response
        b"HTTP/1.1 200 OK\r\n"
        + b"".join(b"X-H%d: 1\r\n" % n for n in range(101))
        + b"Content-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"x" * (64 * 1024) + b"\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=["http-2.0", "http-0.9", "101-upgrade", "101", "only-interim", "101-headers", "head-over-64k"],
)
def test_what_llhttp_would_take_but_the_client_refuses_is_a_clean_failure(
    env: Environment, serve: Callable[..., RawHTTP], reply: bytes
) -> None:
    server = serve(lambda c, r, raw: ([reply], True) if (c, r) == (0, 0) else answer(response(b"next")))
    failed = post(env, server.url("/a"))
    assert not failed.ok and failed.retryable
    assert failed.error is not None and failed.error["type"] == "connection", failed.error
    assert_next(env, server)
    assert connections(server) == [1, 1]


@pytest.mark.parametrize("split", [1024, 40 * 1024, 64 * 1024 - 10])
def test_headers_longer_than_64_kib_are_refused_however_they_arrive(
    env: Environment, serve: Callable[..., RawHTTP], split: int
) -> None:
    big = b"HTTP/1.1 200 OK\r\nX-Big: " + b"x" * (65 * 1024) + b"\r\nContent-Length: 0\r\n\r\n"
    server = serve(lambda c, r, raw: ([big[:split], 0.05, big[split:]], False))
    outcome = post(env, server.url())
    assert not outcome.ok and outcome.retryable
    assert outcome.error is not None and outcome.error["type"] == "connection"
    assert "64" in outcome.error["message"] or "65536" in outcome.error["message"], outcome.error


def test_headers_just_under_the_limit_are_read(env: Environment, serve: Callable[..., RawHTTP]) -> None:
    value = b"x" * (60 * 1024)
    reply = b"HTTP/1.1 200 OK\r\nX-Big: " + value + b"\r\nContent-Length: 2\r\n\r\nok"
    server = serve(lambda c, r, raw: ([reply[:1000], 0.05, reply[1000:]], False))
    outcome = post(env, server.url())
    assert outcome.output is not None and outcome.output["headers"]["x-big"] == value.decode()
