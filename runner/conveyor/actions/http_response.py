"""Reading one HTTP/1.1 response for the runner's client: httptools (Node's llhttp, in C)
parses it; here is what llhttp cannot know by itself, the limits, and whether the
connection may carry another request.

llhttp runs in its strict mode (no leniency turned on): it checks the status line, every
header line (a token, a colon, value characters, CRLF), Content-Length (ASCII digits, one
value, never beside Transfer-Encoding), chunk sizes (hex digits, no sign, no prefix, no
overflow) and the CRLF after every chunk. Whatever it refuses is a ProtocolError: a
retryable failure like a reset, and the connection is closed. On top of it:

* Obsolete line folding (a header line that starts with a space) is refused, as strict
  llhttp refuses it, rather than turned on by the lenient mode that also loosens the
  value checks: such a response is a clean error, its connection discarded.
* Interim 1xx responses (100 Continue, 103 Early Hints) are skipped; a 101 Switching
  Protocols was never asked for and is an error; only HTTP/1.0 and 1.1 are read.
* A HEAD response has no body whatever its headers say: llhttp cannot know the request's
  method, so such a response ends with its head here, and what follows it is beyond it.
* A body delimited by the end of the connection (neither Content-Length nor chunked, as
  HTTP/1.0 servers send it) ends here when the stream ends: httptools cannot tell llhttp
  that it did. The connection is then closed; a body with a length that is cut short is
  a ProtocolError.
* The head is at most 64 KiB and 100 headers (llhttp bounds neither); at most
  MAX_BODY_BYTES of the body (decompressed) are read, and a connection whose body was cut
  there is closed. Trailer fields after a chunked body are read and dropped.
* A connection may carry another request only when its response ended where its framing
  says, the server keeps it alive (llhttp: HTTP/1.1 without `Connection: close`, HTTP/1.0
  with keep-alive) and nothing arrived beyond the response (but blank lines, which llhttp
  skips before a message as any next response's parser would).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import httptools

from conveyor.actions.http_pool import HTTPConnection

MAX_BODY_BYTES = 64 * 1024
_MAX_HEAD = 64 * 1024  # the header lines together; with the status lines, interim responses included
_MAX_HEADERS = 100
_COMPRESSED = {"gzip", "x-gzip", "deflate"}


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 as the runner reads it (a retryable failure)."""


class ClosedBeforeResponse(ConnectionResetError):
    """The connection ended before any byte of a response: on a kept-alive connection, the
    server closed it while it was idle."""


class _Beyond(Exception):
    """Raised in a callback to stop llhttp at bytes that came after the response."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # names in lower case; repeated headers' values joined with ", "


class ResponseReader:
    """One exchange's response, parsed by llhttp as it arrives; the methods are llhttp's
    callbacks (httptools calls only those a protocol object has)."""

    __slots__ = (
        "_fields",
        "_head_only",
        "_head_size",
        "_parser",
        "beyond",
        "body",
        "done",
        "head_done",
        "keep_alive",
        "status",
    )

    def __init__(self, method: str) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._head_only = method == "HEAD"
        self._fields: list[tuple[bytes, bytes]] = []
        self._head_size = 0  # the header lines' bytes
        self.status = 0
        self.keep_alive = False
        self.head_done = False  # the final response's head was read
        self.done = False  # the final response ended where its framing says
        self.beyond = False  # bytes arrived after the response (the connection is not reused)
        self.body: list[bytes] = []

    # --- llhttp's callbacks ------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.done:  # another response nobody asked for
            self.beyond = True
            raise _Beyond

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.head_done:  # after the head: a trailer field, dropped
            self._fields.append((name, value))
            self._head_size += len(name) + len(value) + 4  # ": " and CRLF

    def on_headers_complete(self) -> None:
        parser = self._parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise ProtocolError(f"not an HTTP/1.x response: HTTP/{version}")
        if len(self._fields) > _MAX_HEADERS:
            raise ProtocolError(f"more than {_MAX_HEADERS} response headers")
        if self._head_size > _MAX_HEAD:
            raise ProtocolError(f"response headers longer than {_MAX_HEAD} bytes")
        status = parser.get_status_code()
        if status < 200:
            if status == 101:
                raise ProtocolError("101 Switching Protocols, which the request did not ask for")
            self._fields = []  # an interim response's headers are not the answer's
            return
        self.status = status
        self.keep_alive = parser.should_keep_alive()
        self.head_done = True
        self.done = self._head_only

    def on_body(self, data: bytes) -> None:
        if self.done:  # a HEAD response's "body"
            self.beyond = True
            raise _Beyond
        self.body.append(data)

    def on_message_complete(self) -> None:
        if self.head_done:  # not an interim response's end
            self.done = True

    # --- reading -----------------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self.done:  # the response had ended: what does not parse is beyond it
                self.beyond = True
                return
            # what a callback raised: a ProtocolError, or a fault of the callbacks' (raised
            # as it is, not as a failure of the server's)
            if exc.__context__ is not None:
                raise exc.__context__ from None
            raise ProtocolError(f"the response is not valid HTTP/1.1: {exc}") from exc

    def read_head(self, connection: HTTPConnection, deadline: float) -> Response:
        """Status and headers of the final response (interim 1xx responses are skipped)."""
        received = 0
        while not self.head_done:
            data = connection.recv(deadline)
            if not data:
                if not received:
                    raise ClosedBeforeResponse("the server closed the connection without a response")
                raise ProtocolError("the connection closed in the response's head")
            received += len(data)
            self._feed(data)
            if received > _MAX_HEAD and not self.head_done:  # bounds what llhttp's caller buffers
                raise ProtocolError(f"a response head longer than {_MAX_HEAD} bytes")
        headers: dict[str, str] = {}
        for raw_name, raw_value in self._fields:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1").rstrip(" \t")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        return Response(self.status, headers)

    def read_body(
        self, connection: HTTPConnection, response: Response, deadline: float
    ) -> tuple[bytes, bool, bool]:
        """The body (decompressed when the server compressed it), at most MAX_BODY_BYTES of it;
        whether there was more; and whether the connection may carry another request."""
        encoding = response.headers.get("content-encoding", "").strip().lower()
        decoder = zlib.decompressobj(wbits=zlib.MAX_WBITS | 32) if encoding in _COMPRESSED else None
        chunks: list[bytes] = []
        size = taken = 0
        capped = False
        while True:
            pieces = self.body
            while taken < len(pieces) and not capped:
                data = pieces[taken]
                taken += 1
                if decoder is not None:
                    data = decoder.decompress(data, MAX_BODY_BYTES + 1 - size)
                chunks.append(data)
                size += len(data)
                capped = size > MAX_BODY_BYTES  # the rest is left unread: the connection is closed
            if capped or self.done:
                break
            data = connection.recv(deadline)
            if not data:
                if not _ends_at_close(response):
                    raise ProtocolError("the connection closed before the end of the body")
                break  # the body ran to the close; self.done stays False: not reused
            self._feed(data)
        if not capped and decoder is not None:
            chunks.append(decoder.flush())
        raw = b"".join(chunks)
        reusable = self.done and not capped and self.keep_alive and not self.beyond
        return raw[:MAX_BODY_BYTES], capped or len(raw) > MAX_BODY_BYTES, reusable


def _ends_at_close(response: Response) -> bool:
    """Whether the response's body is delimited by the end of the connection: neither a
    Content-Length nor chunked as the last transfer coding (llhttp framed it the same way)."""
    coding = response.headers.get("transfer-encoding")
    if coding is not None:
        return coding.rsplit(",", 1)[-1].strip().lower() != "chunked"
    return "content-length" not in response.headers
