"""The receivers the chaos runs send to: a local HTTP sink and a local SMTP server.

Both record every request they receive (the side effect happened, whatever the sender
learns of it) with its idempotency key, and both can be taken down and brought back on
the same port: while down, connections are refused, as from a receiver that is away.
"""

from __future__ import annotations

import itertools
import json
import random
import socket
import threading
import time
from dataclasses import dataclass
from email import message_from_bytes
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

# Paths under this prefix answer 422: a permanent refusal, never worth retrying.
REJECT_PREFIX = "/reject"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Delivery:
    """One request as the receiver saw it. `delivery` numbers them in arrival order and
    is sent back in the response body, so a step's recorded output names the request it
    came from."""

    delivery: int
    path: str
    key: str | None
    body: str
    status: int
    at: float


class HttpSink:
    """A threaded HTTP server on 127.0.0.1 answering each request after a small random
    latency: 200 {"delivery": n}, or 422 under REJECT_PREFIX."""

    def __init__(self, latency_ms: tuple[float, float] = (0.0, 20.0), seed: int = 0) -> None:
        self.port = free_port()
        self.latency_ms = latency_ms
        self.deliveries: list[Delivery] = []
        self.lock = threading.Lock()
        self._numbers = itertools.count(1)
        self._random = random.Random(seed)
        self._server: ThreadingHTTPServer | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def up(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if len(raw) < length:
                    return  # the sender died mid-request: an incomplete request is no request
                body = raw.decode(errors="replace")
                path = self.path.split("?", 1)[0]
                status = 422 if path.startswith(REJECT_PREFIX) else 200
                with sink.lock:
                    number = next(sink._numbers)
                    delay = sink._random.uniform(*sink.latency_ms) / 1000
                    sink.deliveries.append(
                        Delivery(number, path, self.headers.get("Idempotency-Key"), body, status, time.time())
                    )
                time.sleep(delay)
                answer: dict[str, object] = {"delivery": number}
                if status != 200:
                    answer["error"] = "order rejected by the receiver"
                payload = json.dumps(answer).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the sender went away (a killed runner): the delivery still happened

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler, bind_and_activate=False)
        server.allow_reuse_address = True
        server.daemon_threads = True
        server.request_queue_size = 512
        server.server_bind()
        server.server_activate()
        threading.Thread(target=server.serve_forever, name="chaos-http-sink", daemon=True).start()
        self._server = server

    def stop(self) -> None:
        """Close the listening socket: from now on connections are refused."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def snapshot(self) -> list[Delivery]:
        with self.lock:
            return list(self.deliveries)


@dataclass(frozen=True)
class Mail:
    key: str | None
    recipients: tuple[str, ...]
    subject: str
    at: float


class SmtpSink:
    """aiosmtpd on 127.0.0.1; records each accepted message with its
    X-Conveyor-Idempotency-Key header."""

    def __init__(self) -> None:
        self.port = free_port()
        self.mails: list[Mail] = []
        self.lock = threading.Lock()
        self._controller: Controller | None = None

    @property
    def up(self) -> bool:
        return self._controller is not None

    def start(self) -> None:
        sink = self

        class Handler:
            async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
                message = message_from_bytes(envelope.original_content or b"", policy=default_policy)
                with sink.lock:
                    sink.mails.append(
                        Mail(
                            message.get("X-Conveyor-Idempotency-Key"),
                            tuple(str(r) for r in envelope.rcpt_tos),
                            str(message.get("Subject", "")),
                            time.time(),
                        )
                    )
                return "250 Message accepted for delivery"

        controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, ready_timeout=30.0)
        controller.start()
        self._controller = controller

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def snapshot(self) -> list[Mail]:
        with self.lock:
            return list(self.mails)
