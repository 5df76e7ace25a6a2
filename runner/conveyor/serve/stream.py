"""`GET /api/notifications/stream`: a user's new notifications as Server-Sent Events.

The stream of the user a token names (tenant and user from the token, user_auth.py):
* it subscribes to the LISTEN hub keyed by (tenant, user): another user's NOTIFY costs this
  stream nothing, and no stream holds a database connection while it waits;
* a wake-up is only a wake-up: the stream then reads the rows with an id above the last one
  it sent (conveyor.notifications_after), so a NOTIFY lost while the hub reconnected, or
  several coalesced into one read, loses nothing. A row whose id is below one already sent
  (its transaction took the id first and committed later) is read by its id from the payload;
* each notification is an event `id: <notification id>` with the fields list_notifications
  returns as JSON, unread_count included;
* `Last-Event-ID` (the header EventSource sends when it reconnects, or `?last_event_id=`)
  first sends what the client missed, at most CATCH_UP_LIMIT, then `event: truncated`
  (the client lists the rest over HTTP); without it the stream starts at the user's newest
  notification, told in `event: ready` (whose id makes a reconnect resume from there);
* the reads go through the server's pool, at most `catch_up_slots` at once (a semaphore), so
  a thousand streams woken together cannot take every connection from the other routes;
* `: ping` every HEARTBEAT_S keeps proxies from closing an idle stream; `retry:` tells the
  browser how soon to reconnect;
* it ends (and the client reconnects) when the hub drops the stream as too slow, when the
  token expires, and when the server shuts down; a client that goes away ends it at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Hashable
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from conveyor.serve.hub import Notification, Reconnected, SubscriptionClosed
from conveyor.serve.tokens import Principal
from conveyor.serve.user_auth import authenticated_user

log = logging.getLogger("conveyor.serve.stream")

CHANNEL = "conveyor_notifications"
HEARTBEAT_S = 15.0
RETRY_MS = 2000
CATCH_UP_LIMIT = 500
# Ids already sent that a late-committed lower id is checked against.
SENT_MEMORY = 1024
# The largest notification id a client may name (bigint).
MAX_ID = 2**63 - 1

_AFTER = "select * from conveyor.notifications_after(%s, %s, %s, %s, %s)"  # ascending by id
_START = "select last_id, unread_count from conveyor.notification_stream_start(%s, %s)"


def notification_key(payload: str) -> Hashable | None:
    """The hub's key of a conveyor_notifications payload: (tenant, user), None if malformed."""
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    tenant, user = data.get("tenant"), data.get("user")
    return (tenant, user) if isinstance(tenant, str) and isinstance(user, str) else None


def _payload_id(payload: str) -> int | None:
    try:
        value = json.loads(payload).get("id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def notification_json(row: dict[str, Any]) -> dict[str, Any]:
    """A notification row as JSON: timestamps in ISO 8601."""
    return {key: value.isoformat() if isinstance(value, datetime) else value for key, value in row.items()}


def event(data: dict[str, Any], *, event_id: int | None = None, name: str | None = None) -> str:
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if name is not None:
        lines.append(f"event: {name}")
    lines.append("data: " + json.dumps(data, separators=(",", ":")))
    return "\n".join(lines) + "\n\n"


def last_event_id(request: Request) -> int | JSONResponse | None:
    """The id the client has up to, from Last-Event-ID or ?last_event_id=; a 400 if not one."""
    text = request.headers.get("last-event-id")
    if text is None:
        text = request.query_params.get("last_event_id")
    if text is None or text.strip() == "":
        return None
    text = text.strip()
    if not text.isdigit() or len(text) > 19 or int(text) > MAX_ID:
        return JSONResponse(
            {"error": f"Last-Event-ID {text[:40]!r} is not a notification id (a whole number, 0 or more)"},
            400,
        )
    return int(text)


class UserStream:
    """The reads one stream makes; `last_id` and the recent ids sent are its position."""

    def __init__(self, request: Request, principal: Principal, last_id: int) -> None:
        self.pool: AsyncConnectionPool[Any] = request.app.state.pool
        self.slots: asyncio.Semaphore = request.app.state.catch_up_slots
        self.principal = principal
        self.last_id = last_id
        # Ids at or below it were the client's (or skipped) when this stream started: never sent.
        self.floor = last_id
        self._sent: deque[int] = deque(maxlen=SENT_MEMORY)
        self._sent_set: set[int] = set()

    def missing(self, notification_id: int | None) -> bool:
        """Whether a wake-up names a row this stream has not sent (None: read to be sure)."""
        if notification_id is None or notification_id > self.last_id:
            return True
        return notification_id > self.floor and notification_id not in self._sent_set

    async def read(self, also_ids: list[int], limit: int = CATCH_UP_LIMIT) -> list[dict[str, Any]]:
        params = (self.principal.tenant, self.principal.user, self.last_id, also_ids or None, limit)
        async with self.slots, self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(_AFTER, params)
            rows = await cursor.fetchall()
        return [row for row in rows if row["id"] not in self._sent_set]

    async def start(self) -> tuple[int, int]:
        async with self.slots, self.pool.connection() as conn:
            cursor = await conn.execute(_START, (self.principal.tenant, self.principal.user))
            row = await cursor.fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    def events(self, rows: list[dict[str, Any]]) -> str:
        out = []
        for row in rows:
            notification_id = int(row["id"])
            if len(self._sent) == self._sent.maxlen:
                self._sent_set.discard(self._sent[0])
            self._sent.append(notification_id)
            self._sent_set.add(notification_id)
            self.last_id = max(self.last_id, notification_id)
            out.append(event(notification_json(row), event_id=notification_id))
        return "".join(out)


async def _events(request: Request, principal: Principal, resume_from: int | None) -> AsyncIterator[str]:
    hub = request.app.state.hub
    stopping: asyncio.Event = request.app.state.stopping
    expires = principal.expires_at.timestamp()
    # Subscribed before the first read: a row committed in between wakes it.
    async with hub.subscribe(CHANNEL, key=(principal.tenant, principal.user)) as subscription:
        yield f"retry: {RETRY_MS}\n\n"
        stream = UserStream(request, principal, resume_from or 0)
        stop = asyncio.ensure_future(stopping.wait())
        getter: asyncio.Future[Any] | None = None
        try:
            if resume_from is None:
                stream.last_id, unread = await stream.start()
                stream.floor = stream.last_id
                yield event(
                    {"last_id": stream.last_id, "unread_count": unread}, event_id=stream.last_id, name="ready"
                )
            else:
                rows = await stream.read([])
                yield stream.events(rows)
                if len(rows) >= CATCH_UP_LIMIT and await stream.read([], 1):
                    # More were missed than one catch-up sends: skip to the newest and say so
                    # (the client lists the rest with GET /api/notifications).
                    sent_up_to = stream.last_id
                    stream.last_id, unread = await stream.start()
                    stream.floor = stream.last_id
                    yield event(
                        {
                            "sent_up_to": sent_up_to,
                            "resumes_after": stream.last_id,
                            "limit": CATCH_UP_LIMIT,
                            "unread_count": unread,
                        },
                        event_id=stream.last_id,
                        name="truncated",
                    )
            while True:
                remaining = expires - time.time()
                if remaining <= 0:
                    yield event({"reason": "the token expired"}, name="expired")
                    return
                getter = asyncio.ensure_future(subscription.get())
                done, _ = await asyncio.wait(
                    {getter, stop}, timeout=min(HEARTBEAT_S, remaining), return_when=asyncio.FIRST_COMPLETED
                )
                if stop in done:
                    getter.cancel()
                    return
                if getter not in done:
                    getter.cancel()
                    yield ": ping\n\n"
                    continue
                try:
                    messages = [getter.result()]
                    while (more := subscription.get_nowait()) is not None:
                        messages.append(more)  # a burst is one read
                except SubscriptionClosed:
                    return  # too slow: the client reconnects with Last-Event-ID
                also: list[int] = []
                read = False
                for message in messages:
                    if isinstance(message, Reconnected):
                        read = True  # NOTIFYs may have been lost: read from the table
                    elif isinstance(message, Notification):
                        notification_id = _payload_id(message.payload)
                        if stream.missing(notification_id):
                            read = True
                            if notification_id is not None and notification_id <= stream.last_id:
                                also.append(notification_id)
                while read:
                    rows = await stream.read(also[:CATCH_UP_LIMIT])
                    if rows:
                        yield stream.events(rows)
                    read, also = len(rows) >= CATCH_UP_LIMIT, []  # a burst past the limit: read on
        except (psycopg.Error, PoolTimeout) as exc:
            # The database went away: end the stream; the client reconnects with Last-Event-ID.
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.warning("notification stream ended: database error", extra={"error": first_line})
        finally:
            # A stream cancelled mid-wait (its client went away) leaves no task behind whose
            # SubscriptionClosed nobody would read.
            for pending in (stop, getter):
                if pending is not None and not pending.done():
                    pending.cancel()


async def notification_stream(request: Request) -> Response:
    try:
        principal = await authenticated_user(request)
    except (psycopg.Error, PoolTimeout) as exc:
        log.error("notification stream refused: database error", extra={"error": str(exc).strip()[:200]})
        return JSONResponse({"error": "internal error"}, 500)
    if isinstance(principal, Response):
        return principal
    resume_from = last_event_id(request)
    if isinstance(resume_from, Response):
        return resume_from
    return StreamingResponse(
        _events(request, principal, resume_from),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
