"""uvicorn's httptools protocol, with the bounds a hostile client meets before the app.

uvicorn parses with httptools (llhttp, strict), as the runner's client does, but leaves
to a proxy what `conveyor serve` must hold on its own (docs/limits.md, "Inbound HTTP"):
* open connections: one beyond `max_connections` is answered 503 at once and closed
  (uvicorn's `limit_concurrency` answers only once a request has arrived);
* a deadline for each whole request (line, headers, body), so a client sending a byte a
  second is cut off too (uvicorn has only an idle keep-alive timeout); it also bounds how
  long a kept-alive connection may stay idle;
* the request line and headers at most `max_header_bytes` (uvicorn has no bound with httptools);
* strict framing and header checks with JSON answers (guard.py), and parser errors as JSON.
An answer sent before the body was read ends our side and discards what the client still
sends for a moment, so that closing does not reset the connection under the answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
from http import HTTPStatus
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from conveyor.serve.guard import HeadScanner, Refusal
from conveyor.serve.limits import Limits

log = logging.getLogger("conveyor.serve")

LINGER_S = 1.0
LINGER_BYTES = 1024 * 1024


def error_answer(status: int, error: str) -> bytes:
    payload = json.dumps({"error": error}).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + payload


class GuardedProtocol(HttpToolsProtocol):
    limits = Limits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scanner = HeadScanner(self.limits)
        self.arrived = 0  # requests received whole
        self.answered = 0  # responses completed
        self.heads_parsed = 0
        self.deadline: asyncio.TimerHandle | None = None
        self.refused = False
        self.deferred: Refusal | None = None
        self.lingered = 0

    @classmethod
    def with_limits(cls, limits: Limits) -> type[GuardedProtocol]:
        return type("GuardedProtocol", (cls,), {"limits": limits})

    # --- connections -----------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self.transport = transport
            self.refused = True
            peer = transport.get_extra_info("peername")
            log.warning("connection refused: too many open connections", extra={"client": str(peer)})
            limit = self.limits.max_connections
            transport.write(
                error_answer(503, f"too many open connections (limit {limit}, --max-connections)")
            )
            transport.close()
            return
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.refused and self.flow is None:
            return  # refused at connect: uvicorn never knew this connection
        super().connection_lost(exc)

    # --- bytes in --------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.refused:
            self.lingered += len(data)
            if self.lingered > LINGER_BYTES:
                self.transport.close()
            return
        if self.deferred is not None:
            return  # a refused request waits for the answers before it; what follows is dropped
        scanned = self.scanner.feed(data)
        self._feed(data if scanned.forward == len(data) else data[: scanned.forward])
        for _ in range(scanned.arrived):
            self._request_arrived()
        if scanned.refusal is not None:
            self._refuse_in_turn(scanned.refusal)

    def _refuse_in_turn(self, refusal: Refusal) -> None:
        if self.answered < self.arrived:
            # Answers go out in order: refuse once the requests before it are answered.
            self.deferred = self.deferred or refusal
            self.flow.pause_reading()
        else:
            self.refuse(refusal)

    def _feed(self, data: bytes) -> None:
        if not data or self.refused:
            return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # no upgrades are served; the request was routed as a plain one
        except httptools.HttpParserError as exc:
            self._refuse_in_turn(Refusal(400, f"malformed request: {exc}"))

    def on_headers_complete(self) -> None:
        self.heads_parsed += 1
        if self.heads_parsed > self.scanner.heads_checked:
            # The parser found a head the checks did not: never route it.
            self._refuse_in_turn(Refusal(400, "malformed request: the head's framing is ambiguous"))
            raise RuntimeError("unchecked head")  # stops the parser; _feed sees it as its error
        super().on_headers_complete()

    def _request_arrived(self) -> None:
        self.arrived += 1
        if self.arrived > self.answered:
            self._disarm()  # the server is working on it; the client owes nothing now
        else:
            self._arm()  # answered before its body ended: time the next request

    # --- answers ---------------------------------------------------------------
    def on_response_complete(self) -> None:
        self.answered += 1
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self.deferred is not None and self.answered >= self.arrived:
            self.refuse(self.deferred)
        elif self.answered >= self.arrived and self.deadline is None:
            self._arm()

    def refuse(self, refusal: Refusal) -> None:
        """Answer `refusal` and close, discarding what the client still sends (LINGER_*)."""
        if self.refused:
            return
        self.refused = True
        self._disarm()
        if self.transport.is_closing():
            return
        self.transport.write(error_answer(refusal.status, refusal.error))
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.flow.resume_reading()
            self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()

    # --- the request deadline --------------------------------------------------
    def _arm(self) -> None:
        self._disarm()
        self.deadline = self.loop.call_later(self.limits.request_timeout_s, self._timed_out)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _timed_out(self) -> None:
        self.deadline = None
        if self.transport.is_closing() or self.refused:
            return
        self.refused = True
        if self.scanner.received or self.scanner.head:
            timeout = self.limits.request_timeout_s
            self.transport.write(
                error_answer(408, f"the request did not arrive within {timeout:g} s (--request-timeout)")
            )
        self.transport.close()

    def shutdown(self) -> None:
        self._disarm()
        # Open streams (notification_routes.py) would hold the shutdown for its whole grace
        # period: the app's `stopping` event ends them, and their clients reconnect elsewhere.
        stopping = self.app_state.get("stopping")
        if isinstance(stopping, asyncio.Event):
            stopping.set()
        super().shutdown()
