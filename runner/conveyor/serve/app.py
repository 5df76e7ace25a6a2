"""The routes of `conveyor serve` (a Starlette app): each forwards to one SQL function.

  ANY  /hooks/<path token>                 → conveyor.receive_webhook(...)
  POST /api/workflows/<slug>/runs          → conveyor.http_trigger(<bearer key>, slug, body)
  GET  /api/me                             → who a user token proves (tokens.py)
  /api/notifications...                    → a user's notifications and their stream
                                             (notification_routes.py, stream.py)
  GET  /api/executions/<id>               → one execution as JSON, by API key (console/api.py)
  /console...                             → the web console (console/, docs/console.md)
  GET  /metrics                           → the database's side for Prometheus, operator token (db_metrics.py)
  POST /email/hooks/<path token>, /u/<token> → email tracking (email_routes.py)
  GET  /healthz                            → 200 when the database answers

Every decision is made in SQL; this only forwards and answers, on the event loop, with
psycopg's async pool. What a hostile client can send was bounded before a route runs
(protocol.py, guard.py); the JSON depth and what jsonb can store are checked here.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from conveyor.serve.approval_routes import APPROVAL_ROUTES
from conveyor.serve.bodies import BadRequest, json_too_deep, parse_json_object
from conveyor.serve.console import CONSOLE_ROUTES
from conveyor.serve.db_metrics import METRICS_ROUTES
from conveyor.serve.email_routes import EMAIL_ROUTES
from conveyor.serve.limits import Limits
from conveyor.serve.notification_routes import NOTIFICATION_ROUTES
from conveyor.serve.user_auth import authenticated_user

log = logging.getLogger("conveyor.serve")

_HOOK_TOKEN = re.compile(r"[A-Za-z0-9_-]{32,}")
_SLUG = re.compile(r"[a-z0-9][a-z0-9-]*")
# Bodies larger than this are checked and parsed on a thread, not on the event loop.
OFF_LOOP_BYTES = 64 * 1024

Endpoint = Callable[[Request], Awaitable[Response]]


def error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status, headers=headers or None)


def _pool(request: Request) -> AsyncConnectionPool[Any]:
    pool: AsyncConnectionPool[Any] = request.app.state.pool
    return pool


async def _call(request: Request, query: str, params: tuple[Any, ...]) -> Response:
    async with _pool(request).connection() as conn:
        row = await (await conn.execute(query, params)).fetchone()
    assert row is not None
    return JSONResponse(row[1], int(row[0]))


def answers_errors(endpoint: Endpoint) -> Endpoint:
    """A database error or a bug still answers (500), and a client gone mid-body ends quietly."""

    async def wrapped(request: Request) -> Response:
        try:
            return await endpoint(request)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody reads it; uvicorn drops it
        except psycopg.Error as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.error("request failed", extra={"path": request.url.path, "error": first_line})
            return error(500, "internal error")
        except Exception:
            log.exception("request failed", extra={"path": request.url.path})
            return error(500, "internal error")

    return wrapped


async def _json_body(request: Request) -> tuple[bytes, Response | None]:
    """The body, or the 400 a body nested deeper than the limit gets."""
    body = await request.body()
    limits: Limits = request.app.state.limits
    depth = limits.max_json_depth
    deep = (
        await asyncio.to_thread(json_too_deep, body, depth)
        if len(body) > OFF_LOOP_BYTES
        else json_too_deep(body, depth)
    )
    if deep:
        return body, error(
            400, f"body is JSON nested deeper than {depth} levels (the limit, --max-json-depth)"
        )
    return body, None


def _headers(request: Request) -> dict[str, str]:
    # guard.py refused invalid UTF-8 and NUL before the request got here.
    return {name.decode("latin-1"): value.decode("utf-8") for name, value in request.headers.raw}


@answers_errors
async def hook(request: Request) -> Response:
    token = request.path_params["token"]
    if not _HOOK_TOKEN.fullmatch(token):
        return error(404, "not found")
    body, refused = await _json_body(request)
    if refused is not None:
        return refused
    client = request.client.host if request.client else None
    return await _call(
        request,
        "select status, body from conveyor.receive_webhook(%s, %s, %s, %s, %s)",
        (token, request.method, Jsonb(_headers(request)), body, client),
    )


@answers_errors
async def manual_run(request: Request) -> Response:
    slug = request.path_params["slug"]
    if not _SLUG.fullmatch(slug):
        return error(404, "not found")
    body, refused = await _json_body(request)
    if refused is not None:
        return refused
    authorization = request.headers.get("authorization", "")
    key = authorization[7:].strip() if authorization.lower().startswith("bearer ") else ""
    try:
        if len(body) > OFF_LOOP_BYTES:
            data = await asyncio.to_thread(parse_json_object, body)
        else:
            data = parse_json_object(body) if body else {}
    except BadRequest as exc:
        return error(exc.status, exc.error)
    return await _call(
        request, "select status, body from conveyor.http_trigger(%s, %s, %s)", (key, slug, Jsonb(data))
    )


@answers_errors
async def me(request: Request) -> Response:
    principal = await authenticated_user(request)
    if isinstance(principal, Response):
        return principal
    return JSONResponse(principal.as_json())


async def healthz(request: Request) -> Response:
    await request.body()  # a body sent with it is read, never taken for the next request
    try:
        async with _pool(request).connection(timeout=5) as conn:
            await conn.execute("select 1")
    except (psycopg.Error, PoolTimeout) as exc:
        return JSONResponse({"status": "unavailable", "error": str(exc).splitlines()[0]}, 503)
    return JSONResponse({"status": "ok"})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        return error(405, f"{request.method} is not allowed here; use {allowed}", Allow=allowed)
    return error(exc.status_code, "not found" if exc.status_code == 404 else str(exc.detail))


# The endpoint decides which of them it takes (405 from conveyor.receive_webhook).
_HOOK_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]

ROUTES = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/hooks/{token}", hook, methods=_HOOK_METHODS),
    Route("/hooks/{token}/", hook, methods=_HOOK_METHODS),
    Route("/api/workflows/{slug}/runs", manual_run, methods=["POST"]),
    Route("/api/workflows/{slug}/runs/", manual_run, methods=["POST"]),
    Route("/api/me", me, methods=["GET"]),
    *NOTIFICATION_ROUTES,
    *APPROVAL_ROUTES,
    *CONSOLE_ROUTES,
    *METRICS_ROUTES,
    *EMAIL_ROUTES,
]


def make_app(lifespan: Any) -> Starlette:
    app = Starlette(routes=ROUTES, exception_handlers={HTTPException: _http_error}, lifespan=lifespan)
    app.router.redirect_slashes = False
    return app
