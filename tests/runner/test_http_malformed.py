"""Malformed responses from a real local socket server: whatever the server gets wrong (a
chunk size, a Content-Length, a header line, a body cut short), the action fails cleanly —
a retryable connection error, never an unmapped exception — and the connection it came on
is discarded: the next request opens a new one and reads the well-formed version of the
same response from it.

The server keeps the connection open after a malformed answer (but for a body cut short,
where closing is the fault), so a client that put the connection back would be caught
reusing it."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.actions import Environment
from conveyor.netguard import NetworkPolicy
from tests.runner.raw_http import Answer, RawHTTP, post

EXAMPLES = settings(max_examples=40, deadline=None)
_CHUNKED = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
_DIGITS = st.integers(min_value=0, max_value=999).map(str)


def chunked(size: bytes, data: bytes) -> bytes:
    return _CHUNKED + size + b"\r\n" + data + b"\r\n0\r\n\r\n"


def with_length(length: bytes, data: bytes, extra: bytes = b"") -> bytes:
    """A response of `data` with `length` as its Content-Length, `extra` as its first header lines."""
    head = b"HTTP/1.1 200 OK\r\n" + extra + b"Content-Type: text/plain\r\nContent-Length: " + length
    return head + b"\r\n\r\n" + data


def assert_clean_failure_then_a_new_connection(bad: Answer, good: bytes, body: bytes) -> None:
    """`bad` answers the first request, `good` (carrying `body`) every later one."""
    server = RawHTTP(lambda c, r, raw: bad if (c, r) == (0, 0) else ([good], False))
    env = Environment.create(NetworkPolicy.parse("127.0.0.1/32"))
    try:
        failed = post(env, server.url())
        then = post(env, server.url())
    finally:
        env.close()
        server.close()
    assert not failed.ok and failed.retryable, failed
    assert failed.error is not None and failed.error["type"] == "connection", failed.error
    assert then.ok and then.output is not None and then.output["body"] == body.decode(), then
    assert [len(requests) for requests in server.connections] == [1, 1]  # the first was not kept


_HEX = st.integers(min_value=1, max_value=4096).map(lambda n: f"{n:x}")
# not 1*HEXDIG (with an optional ;extension): what int(x, 16) accepted and llhttp refuses
_BAD_CHUNK_SIZES = st.one_of(
    st.sampled_from(["0x", "0X", "+", "-", " ", "\t"]).flatmap(lambda p: _HEX.map(lambda h: p + h)),
    st.tuples(_HEX, st.sampled_from(["_", " ", "\t", ".", ",", "g", "x", "-", "+"]), _HEX).map("".join),
    st.text(alphabet="ghijklmnopqrstuvwxyzGHIJKLMNOPQRSTUVWXYZ_-+", min_size=1, max_size=4),
    st.just("-1"),
    st.just(""),
    st.just("1" + "0" * 20),  # 16**20 bytes: no integer a server means
)


@EXAMPLES
@given(size=_BAD_CHUNK_SIZES, data=st.binary(min_size=1, max_size=64).map(lambda b: b.hex().encode()))
def test_a_malformed_chunk_size_is_a_clean_failure(size: str, data: bytes) -> None:
    assert_clean_failure_then_a_new_connection(
        ([chunked(size.encode(), data)], False), chunked(f"{len(data):x}".encode(), data), data
    )


# not 1*DIGIT (repeated only as the same number): signs, prefixes, other digits, lists that disagree
_BAD_LENGTHS = st.one_of(
    st.sampled_from(["+", "-", "0x", "0X"]).flatmap(lambda p: _DIGITS.map(lambda d: p + d)),
    st.tuples(_DIGITS, st.sampled_from(["_", " ", "\t", ".", "e", "/"]), _DIGITS).map("".join),
    st.text(
        alphabet=st.characters(categories=["Nd", "No"], exclude_characters="0123456789"),
        min_size=1,
        max_size=3,
    ),
    st.tuples(_DIGITS, _DIGITS).filter(lambda p: p[0] != p[1]).map(", ".join),
    st.just(""),
    st.just("1" * 21),
)


@EXAMPLES
@given(length=_BAD_LENGTHS, data=st.text(alphabet="abcdef", min_size=0, max_size=40).map(str.encode))
def test_a_malformed_content_length_is_a_clean_failure(length: str, data: bytes) -> None:
    assert_clean_failure_then_a_new_connection(
        ([with_length(length.encode(), data)], False), with_length(str(len(data)).encode(), data), data
    )


_VALUE = st.text(alphabet="abcdefxyz0123456789", min_size=1, max_size=12)
# header lines HTTP/1.1 does not allow: a fold with nothing to continue, a fold continuing
# a header (obsolete, refused), no colon, space before the colon, a name that is not a
# token, a control character or lone CR in the value
_BAD_HEADER_LINES = st.one_of(
    st.tuples(st.sampled_from([" ", "\t", "  "]), _VALUE).map("".join),
    st.tuples(_VALUE, st.sampled_from(["\r\n ", "\r\n\t", "\r\n  "]), _VALUE).map(
        lambda p: "X-Note: " + "".join(p)
    ),
    _VALUE.map(lambda v: f"X-Note {v}"),
    _VALUE.map(lambda v: f"X-Note : {v}"),
    st.tuples(st.sampled_from(["X(Note", "X Note", "X@Note", "", "X\x80"]), _VALUE).map(": ".join),
    st.tuples(_VALUE, st.sampled_from(["\x00", "\r", "\x0b", "\x0c"]), _VALUE).map(
        lambda p: "X-Note: " + "".join(p)
    ),
)


@EXAMPLES
@given(line=_BAD_HEADER_LINES, data=st.text(alphabet="abcdef", min_size=1, max_size=20).map(str.encode))
def test_a_malformed_header_line_is_a_clean_failure(line: str, data: bytes) -> None:
    length = str(len(data)).encode()
    bad = with_length(length, data, extra=line.encode("latin-1") + b"\r\n")
    assert_clean_failure_then_a_new_connection(([bad], False), with_length(length, data), data)


@EXAMPLES
@given(
    data=st.text(alphabet="abcdef", min_size=1, max_size=60).map(str.encode),
    framing=st.sampled_from(["length", "chunked"]),
    cut=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
def test_a_response_cut_short_is_a_clean_failure(data: bytes, framing: str, cut: float) -> None:
    # anywhere before its last byte: in the status line, the headers, the body, the last chunk
    full = (
        with_length(str(len(data)).encode(), data)
        if framing == "length"
        else chunked(b"%x" % len(data), data)
    )
    assert_clean_failure_then_a_new_connection(([full[: int(len(full) * cut)]], True), full, data)
