"""The framing checks every request's head passes before the HTTP parser sees it.

`conveyor serve` frames a body only by one `Content-Length` of plain digits, so that a proxy
in front and the server always agree where a request ends (no request smuggling). The
parser (llhttp, through httptools) would refuse most of what is refused here too, but with
its own words; these checks answer with the status and message docs/limits.md promises,
before any route or database work. `HeadScanner` finds where each request's head and body
end in the byte stream, which is exact because only `Content-Length` framing is accepted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from conveyor.serve.limits import Limits

_LENGTH = re.compile(rb"[0-9]+")
_BODY_METHODS = {b"POST", b"PUT", b"PATCH"}
_END = b"\r\n\r\n"


class Refusal(Exception):
    """A request answered with `status` and `error` before its body is read; the connection closes."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


def body_length(head: bytes, limits: Limits) -> int:
    """The body's length a complete head (without its final CRLF CRLF) announces, or a Refusal."""
    request_line, _, rest = head.partition(b"\r\n")
    method = request_line.split(b" ", 1)[0]
    lines = rest.split(b"\r\n") if rest else []
    if len(lines) > limits.max_headers:
        raise Refusal(431, f"more than {limits.max_headers} headers")
    lengths: list[bytes] = []
    names: list[tuple[str, bytes]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            raise Refusal(400, "header line folding (a line starting with a space) is not supported")
        raw_name, colon, value = line.partition(b":")
        name = raw_name.decode("latin-1")
        if not colon:
            raise Refusal(400, f"header line {name[:40]!r} has no colon")
        lowered = raw_name.strip(b" \t").lower()
        if lowered == b"transfer-encoding":
            raise Refusal(501, "Transfer-Encoding is not supported; send the body with a Content-Length")
        if lowered == b"content-length":
            lengths.append(value.strip(b" \t"))
        names.append((name, raw_name + value))
    length = _content_length(method, lengths, limits)
    # After the framing, as before: a bad header in a well-framed request is a 400 too.
    for name, raw in names:
        if b"\x00" in raw:
            raise Refusal(400, f"header {name} contains a NUL character")
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Refusal(400, f"header {name} is not valid UTF-8") from None
    return length


def _content_length(method: bytes, lengths: list[bytes], limits: Limits) -> int:
    if len(lengths) > 1:
        raise Refusal(400, "more than one Content-Length header")
    if not lengths:
        if method in _BODY_METHODS:
            raise Refusal(411, f"{method.decode('latin-1')} needs a Content-Length header (0 for no body)")
        return 0
    value = lengths[0]
    if not _LENGTH.fullmatch(value):
        raise Refusal(
            400, f"Content-Length must be a non-negative integer, not {value[:40].decode('latin-1')!r}"
        )
    if len(value.lstrip(b"0")) > 18 or int(value) > limits.max_body_bytes:
        raise Refusal(
            413, f"body is larger than {limits.max_body_bytes} bytes (the server's limit, --max-body-bytes)"
        )
    return int(value)


@dataclass
class Scanned:
    """What one chunk of bytes held: how many may go to the parser, the requests that
    arrived whole in it, and a refusal for the head that follows them (if any)."""

    forward: int
    arrived: int
    refusal: Refusal | None


class HeadScanner:
    """Follows request boundaries through a connection's bytes: a head up to CRLF CRLF
    (at most max_header_bytes), then the Content-Length bytes of its body."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.head = bytearray()
        self.body_left = 0
        self.heads_checked = 0
        # Bytes of the request now arriving (for 408: did the client start one?).
        self.received = 0

    def feed(self, data: bytes) -> Scanned:
        pos, arrived, size = 0, 0, len(data)
        while pos < size:
            if self.body_left:
                take = min(self.body_left, size - pos)
                self.body_left -= take
                self.received += take
                pos += take
                if not self.body_left:
                    arrived += 1
                    self.received = 0
                continue
            if not self.head:
                # The parser skips empty lines before a request line; so do we.
                while pos < size and data[pos] in b"\r\n":
                    pos += 1
                if pos == size:
                    break
            start = pos
            search_from = max(0, len(self.head) - 3)
            self.head += data[pos:]
            end = self.head.find(_END, search_from)
            limit = self.limits.max_header_bytes
            if end < 0 or end + 4 > limit:
                if len(self.head) > limit or end >= 0:
                    return Scanned(start, arrived, Refusal(431, _too_long(limit)))
                self.received += size - pos
                pos = size
                break
            consumed = end + 4 - (len(self.head) - (size - pos))
            try:
                length = body_length(bytes(self.head[:end]), self.limits)
            except Refusal as refusal:
                return Scanned(start, arrived, refusal)
            self.heads_checked += 1
            self.head.clear()
            pos += consumed
            self.received += consumed
            self.body_left = length
            if not length:
                arrived += 1
                self.received = 0
        return Scanned(size, arrived, None)


def _too_long(limit: int) -> str:
    return f"request line and headers exceed {limit} bytes (--max-header-bytes)"
