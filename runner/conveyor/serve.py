"""`conveyor serve`: the inbound HTTP listener, a thin shell over SQL functions.

Routes (every decision is made in SQL; this only forwards and answers):
  ANY  /hooks/<path token>                 → conveyor.receive_webhook(...)
  POST /api/workflows/<slug>/runs          → conveyor.http_trigger(<bearer key>, slug, body)
  GET  /healthz                            → 200 when the database answers

The standard library's threading HTTP server is enough here: requests are small, each
is one SQL call, and concurrency is bounded by the connection pool.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

log = logging.getLogger("conveyor.serve")

# Bodies above this are refused before they are read; endpoints have their own (smaller) limits.
HARD_BODY_LIMIT = 10 * 1024 * 1024
_HOOK = re.compile(r"^/hooks/([A-Za-z0-9_-]{32,})/?$")
_RUN = re.compile(r"^/api/workflows/([a-z0-9][a-z0-9-]*)/runs/?$")


class ConveyorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], pool: ConnectionPool[Any]) -> None:
        super().__init__(address, Handler)
        self.pool = pool


class Handler(BaseHTTPRequestHandler):
    server: ConveyorHTTPServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/healthz":
            try:
                with self.server.pool.connection(timeout=5) as conn:
                    conn.execute("select 1")
                self._answer(200, {"status": "ok"})
            except (psycopg.Error, TimeoutError) as exc:
                self._answer(503, {"status": "unavailable", "error": str(exc).splitlines()[0]})
            return
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        path = self.path.split("?", 1)[0]
        length = int(self.headers.get("Content-Length") or 0)
        if length > HARD_BODY_LIMIT:
            self._answer(413, {"error": f"body is larger than {HARD_BODY_LIMIT} bytes"}, close=True)
            return
        body = self.rfile.read(length) if length else b""
        hook = _HOOK.match(path)
        run = _RUN.match(path)
        try:
            if hook:
                status, answer = self._call(
                    "select status, body from conveyor.receive_webhook(%s, %s, %s, %s, %s)",
                    (
                        hook.group(1),
                        self.command,
                        Jsonb({k.lower(): v for k, v in self.headers.items()}),
                        body,
                        self.client_address[0],
                    ),
                )
            elif run and self.command == "POST":
                status, answer = self._manual_run(unquote(run.group(1)), body)
            else:
                status, answer = 404, {"error": "not found"}
        except psycopg.Error as exc:
            log.error("request failed", extra={"path": path, "error": str(exc).strip().splitlines()[0]})
            status, answer = 500, {"error": "internal error"}
        self._answer(status, answer)

    def _manual_run(self, slug: str, body: bytes) -> tuple[int, Any]:
        authorization = self.headers.get("Authorization", "")
        key = authorization[7:].strip() if authorization.lower().startswith("bearer ") else ""
        try:
            data = json.loads(body) if body else {}
        except ValueError:
            return 400, {"error": "body is not valid JSON"}
        if not isinstance(data, dict):
            return 400, {"error": "body must be a JSON object"}
        return self._call(
            "select status, body from conveyor.http_trigger(%s, %s, %s)", (key, slug, Jsonb(data))
        )

    def _call(self, query: str, params: tuple[Any, ...]) -> tuple[int, Any]:
        with self.server.pool.connection() as conn:
            row = conn.execute(query, params).fetchone()
        assert row is not None
        return int(row[0]), row[1]

    def _answer(self, status: int, body: Any, *, close: bool = False) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status, HTTPStatus(status).phrase)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        log.info("http", extra={"client": self.client_address[0], "request": format % args})


def make_server(database_url: str, host: str, port: int, pool_size: int = 8) -> ConveyorHTTPServer:
    pool: ConnectionPool[Any] = ConnectionPool(
        database_url, min_size=1, max_size=pool_size, kwargs={"autocommit": True}, open=True
    )
    return ConveyorHTTPServer((host, port), pool)


def serve_in_thread(server: ConveyorHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="conveyor-serve", daemon=True)
    thread.start()
    return thread
