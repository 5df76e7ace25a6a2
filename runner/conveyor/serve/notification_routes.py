"""A user's notifications over HTTP, with their token (docs/notifications.md#over-http).

  GET  /api/notifications?unread_only=&limit=   → conveyor.list_notifications → list + unread_count
  POST /api/notifications/<id>/read|unread|archive → conveyor.mark_notification
  POST /api/notifications/read-all               → conveyor.mark_all_read
  GET  /api/notifications/stream                 → Server-Sent Events (stream.py)
  GET  /demo/notifications                       → a page that shows the stream (stream_demo.py)

Tenant and user come from the token only. The SQL functions decide: their refusals are
400 (a bad argument) or 404 (a notification of another user or tenant is told apart from a
missing one by nothing, as in SQL).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from conveyor.serve.stream import MAX_ID, notification_json, notification_stream
from conveyor.serve.stream_demo import demo_page
from conveyor.serve.tokens import Principal
from conveyor.serve.user_auth import authenticated_user

log = logging.getLogger("conveyor.serve")

# SQLSTATEs the notification functions refuse with, and the status each is answered with.
_STATUS_OF = {"22023": 400, "54000": 400, "22003": 400, "P0002": 404}
_BOOLEANS = {"": False, "0": False, "false": False, "1": True, "true": True}

UserEndpoint = Callable[[Request, Principal], Awaitable[Response]]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status)


def user_route(endpoint: UserEndpoint) -> Callable[[Request], Awaitable[Response]]:
    """The token checked first; the SQL function's refusal answered 400 / 404 with its message."""

    async def wrapped(request: Request) -> Response:
        principal = await authenticated_user(request)
        if isinstance(principal, Response):
            return principal
        try:
            return await endpoint(request, principal)
        except psycopg.Error as exc:
            status = _STATUS_OF.get(exc.sqlstate or "")
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if status is not None:
                return _error(status, first_line)
            log.error("request failed", extra={"path": request.url.path, "error": first_line})
            return _error(500, "internal error")

    return wrapped


async def _rows(request: Request, query: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
    pool: AsyncConnectionPool[Any] = request.app.state.pool
    async with pool.connection() as conn:
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute(query, params)
        rows: list[dict[str, Any]] = await cursor.fetchall()
    return rows


def _notification_id(request: Request) -> int | None:
    text = request.path_params["id"]
    return int(text) if text.isdigit() and len(text) <= 19 and int(text) <= MAX_ID else None


@user_route
async def list_notifications(request: Request, principal: Principal) -> Response:
    unread_text = request.query_params.get("unread_only", "").lower()
    if unread_text not in _BOOLEANS:
        return _error(400, f"unread_only: {unread_text[:40]!r} is not true or false")
    limit_text = request.query_params.get("limit", "50")
    if not limit_text.isdigit() or len(limit_text) > 9:
        return _error(400, f"limit: {limit_text[:40]!r} is not a number of notifications (1 to 500)")
    rows = await _rows(
        request,
        "select * from conveyor.list_notifications(%s, %s, %s, %s)",
        (principal.tenant, principal.user, _BOOLEANS[unread_text], int(limit_text)),
    )
    # unread_count is on every row; with no row listed, none is unread (unread ones are listed).
    unread = int(rows[0]["unread_count"]) if rows else 0
    notifications = [notification_json({k: v for k, v in row.items() if k != "unread_count"}) for row in rows]
    return JSONResponse({"notifications": notifications, "unread_count": unread})


def _marking(state: str) -> Callable[[Request], Awaitable[Response]]:
    @user_route
    async def mark(request: Request, principal: Principal) -> Response:
        return await _mark(request, principal, state)

    return mark


async def _mark(request: Request, principal: Principal, state: str) -> Response:
    notification_id = _notification_id(request)
    if notification_id is None:
        return _error(
            404,
            f"notification {request.path_params['id'][:40]} is not a notification of user "
            f"{principal.user!r} in tenant {principal.tenant!r}",
        )
    rows = await _rows(
        request,
        "select read_at, archived_at from conveyor.mark_notification(%s, %s, %s, %s)",
        (principal.tenant, principal.user, notification_id, state),
    )
    return JSONResponse({"id": notification_id, **notification_json(rows[0])})


@user_route
async def read_all(request: Request, principal: Principal) -> Response:
    rows = await _rows(
        request, "select conveyor.mark_all_read(%s, %s) as marked", (principal.tenant, principal.user)
    )
    return JSONResponse({"marked": int(rows[0]["marked"])})


NOTIFICATION_ROUTES = [
    Route("/api/notifications", list_notifications, methods=["GET"]),
    Route("/api/notifications/stream", notification_stream, methods=["GET"]),
    Route("/api/notifications/read-all", read_all, methods=["POST"]),
    Route("/api/notifications/{id}/read", _marking("read"), methods=["POST"]),
    Route("/api/notifications/{id}/unread", _marking("unread"), methods=["POST"]),
    Route("/api/notifications/{id}/archive", _marking("archived"), methods=["POST"]),
    Route("/demo/notifications", demo_page, methods=["GET"]),
]
