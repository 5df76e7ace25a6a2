"""Email tracking over HTTP (docs/email-tracking.md): each route forwards to one SQL function.

POST /email/hooks/<path token>  → conveyor.receive_email_webhook (a provider's signed
                                  events: svix or mailgun, by the endpoint)
GET  /u/<token>                 → a confirmation page (changes nothing: mail scanners
                                  follow links)
POST /u/<token>                 → conveyor.email_unsubscribe: RFC 8058 one-click
                                  unsubscribe (the mail client's POST, or the page's button)
"""

from __future__ import annotations

import html
import logging
import re
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

log = logging.getLogger("conveyor.serve")

_TOKEN = re.compile(r"[A-Za-z0-9_-]{32,64}")


async def _row(request: Request, query: str, params: tuple[Any, ...]) -> tuple[int, dict[str, Any]]:
    pool: AsyncConnectionPool[Any] = request.app.state.pool
    async with pool.connection() as conn:
        row = await (await conn.execute(query, params)).fetchone()
    assert row is not None
    return int(row[0]), dict(row[1])


def _failed(request: Request, exc: Exception) -> Response:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    log.error("request failed", extra={"path": request.url.path, "error": first_line})
    return JSONResponse({"error": "internal error"}, 500)


async def provider_hook(request: Request) -> Response:
    token = request.path_params["token"]
    if not _TOKEN.fullmatch(token):
        return JSONResponse({"error": "no such endpoint"}, 404)
    try:
        body = await request.body()
        # guard.py refused invalid UTF-8 and NUL in headers; names are lower-case (ASGI)
        headers = dict(request.headers.items())
        status, answer = await _row(
            request,
            "select status, body from conveyor.receive_email_webhook(%s, %s, %s)",
            (token, Jsonb(headers), body),
        )
    except ClientDisconnect:
        return Response(status_code=400)
    except psycopg.Error as exc:
        return _failed(request, exc)
    return JSONResponse(answer, status)


def _page(title: str, text: str, form: str = "", status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        "<!doctype html><html><head><meta charset=utf-8><meta name=robots content=noindex>"
        f"<title>{html.escape(title)}</title></head><body><h1>{html.escape(title)}</h1>"
        f"<p>{html.escape(text)}</p>{form}</body></html>",
        status,
    )


async def unsubscribe(request: Request) -> Response:
    token = request.path_params["token"]
    if not _TOKEN.fullmatch(token):
        return _page("Unsubscribe", "This unsubscribe link is not valid.", status=404)
    confirm = request.method == "POST"
    try:
        await request.body()
        status, answer = await _row(
            request, "select status, body from conveyor.email_unsubscribe(%s, %s)", (token, confirm)
        )
    except ClientDisconnect:
        return Response(status_code=400)
    except psycopg.Error as exc:
        return _failed(request, exc)
    if status != 200:
        return _page("Unsubscribe", str(answer.get("error", "not found")).capitalize() + ".", status=status)
    address = str(answer.get("address", ""))
    if confirm or answer.get("unsubscribed"):
        return _page("Unsubscribed", f"{address} will get no more of these emails.")
    form = f'<form method=post action="/u/{token}"><button type=submit>Unsubscribe</button></form>'
    return _page("Unsubscribe", f"Stop these emails to {address}?", form)


EMAIL_ROUTES = [
    Route("/email/hooks/{token}", provider_hook, methods=["POST"]),
    Route("/u/{token}", unsubscribe, methods=["GET", "POST"]),
]
