"""Email tracking over HTTP (docs/email-tracking.md): each route forwards to one SQL function.

POST /email/hooks/<path token>  → conveyor.receive_email_webhook (a provider's signed
                                  events: svix or mailgun, by the endpoint)
POST /email/inbound/<path token> → conveyor.receive_email_inbound (a reply, from Mailgun's
                                  inbound routes: a signed form; the mailgun endpoint's token)
GET  /u/<token>                 → a confirmation page (changes nothing: mail scanners
                                  follow links)
POST /u/<token>                 → conveyor.email_unsubscribe: RFC 8058 one-click
                                  unsubscribe (the mail client's POST, or the page's button)
"""

from __future__ import annotations

import html
import logging
import re
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import parse_qs

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


MAX_FIELDS = 200
MAX_FIELD_CHARS = 65536


def form_fields(content_type: str, body: bytes) -> dict[str, str]:
    """The text fields of a posted form (urlencoded or multipart; files are left out), the
    first value of each name, at most MAX_FIELDS of them, each cut at MAX_FIELD_CHARS."""
    fields: dict[str, str] = {}
    if content_type.startswith("application/x-www-form-urlencoded"):
        parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=MAX_FIELDS)
        for name, values in parsed.items():
            fields[name] = values[0][:MAX_FIELD_CHARS]
    elif content_type.startswith("multipart/form-data"):
        head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
        message: Message = BytesParser(policy=HTTP).parsebytes(head + body)
        for part in message.iter_parts() if message.is_multipart() else []:  # type: ignore[attr-defined]
            name = part.get_param("name", header="content-disposition")
            if not isinstance(name, str) or part.get_filename() or name in fields:
                continue
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                text = payload.decode(part.get_content_charset() or "utf-8", "replace")
                fields[name] = text[:MAX_FIELD_CHARS]
            if len(fields) >= MAX_FIELDS:
                break
    return fields


async def inbound_reply(request: Request) -> Response:
    token = request.path_params["token"]
    if not _TOKEN.fullmatch(token):
        return JSONResponse({"error": "no such endpoint"}, 404)
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        return JSONResponse(
            {"error": "expected a form (urlencoded or multipart), as Mailgun's routes post"}, 415
        )
    try:
        fields = form_fields(content_type, await request.body())
        status, answer = await _row(
            request, "select status, body from conveyor.receive_email_inbound(%s, %s)", (token, Jsonb(fields))
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
    Route("/email/inbound/{token}", inbound_reply, methods=["POST"]),
    Route("/u/{token}", unsubscribe, methods=["GET", "POST"]),
]
