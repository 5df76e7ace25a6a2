"""A scripted raw HTTP/1.1 server for the runner's HTTP client tests: it answers with exactly
the bytes a test gives (malformed ones included) and records every connection it accepted
with the requests read on it."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from conveyor.actions import ActionRequest, Environment, Outcome, perform

# An answer: the pieces to write (bytes) with pauses between them (seconds), and whether
# to close the connection afterwards. None: close the connection without answering.
Answer = tuple[list[bytes | float], bool] | None
Script = Callable[[int, int, bytes], Answer]


def response(
    body: bytes = b"ok", status: str = "200 OK", headers: tuple[str, ...] = ("Content-Type: text/plain",)
) -> bytes:
    head = [f"HTTP/1.1 {status}", *headers, f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(head).encode() + body


def answer(data: bytes) -> Answer:
    return [data], False


class RawHTTP:
    """Answers the requests on each connection as `script(connection, request, raw)` says,
    and records every connection with the requests read on it."""

    def __init__(self, script: Script, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> None:
        self.script = script
        self.tls = tls
        self.listener = socket.create_server((host, 0))
        self.port = int(self.listener.getsockname()[1])
        self.connections: list[list[bytes]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                index = len(self.connections)
                self.connections.append([])
            threading.Thread(target=self._serve, args=(conn, index), daemon=True).start()

    def _serve(self, conn: socket.socket, index: int) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buffer) < length:
                    buffer += conn.recv(65536)
                request, buffer = head + b"\r\n\r\n" + buffer[:length], buffer[length:]
                with self.lock:
                    number = len(self.connections[index])
                    self.connections[index].append(request)
                reply = self.script(index, number, request)
                if reply is None:
                    return
                pieces, close = reply
                for piece in pieces:
                    if isinstance(piece, float):
                        time.sleep(piece)
                    else:
                        conn.sendall(piece)
                if close:
                    return
        except OSError:
            return
        finally:
            conn.close()

    def url(self, path: str = "/", host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def close(self) -> None:
        self.listener.close()


def post(env: Environment, url: str, timeout_s: float = 5.0, **data: Any) -> Outcome:
    """A webhook.send POST of a small JSON body to `url`, performed as the runner does."""
    return perform(
        ActionRequest("webhook.send", {"url": url, "body": {"n": 1}, **data}, "k:1", timeout_s), env
    )
