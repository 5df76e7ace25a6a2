"""The execution page's live stream (server-sent events): the timeline fragment again each
time the execution changed, until it is finished and nothing more can change.

It subscribes to the hub's `conveyor_executions` channel (serve/hub.py: one LISTEN per
server, fanned out), so a NOTIFY there wakes it at once; nothing in the engine sends one yet
(that would be the write-back path, which is benchmarked), so it also re-reads every
POLL_S. A re-read is one indexed read of one execution's rows; the fragment is sent only
when it differs from the last one sent."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import psycopg
from psycopg_pool import PoolTimeout
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from conveyor.serve.console import timeline
from conveyor.serve.console.auth import signed_in, tenant_of
from conveyor.serve.hub import SubscriptionClosed
from conveyor.serve.stream import event

CHANNEL = "conveyor_executions"
POLL_S = 1.0
MAX_BIGINT = 2**63 - 1
FINAL = ("completed", "failed", "cancelled", "timed_out")


async def _events(request: Request, tenant: str, execution_id: int, expires: float) -> AsyncIterator[str]:
    hub = request.app.state.hub
    stopping: asyncio.Event = request.app.state.stopping
    sent = ""
    async with hub.subscribe(CHANNEL) as subscription:
        yield "retry: 2000\n\n"
        try:
            while time.time() < expires and not stopping.is_set():
                data = await timeline.load(request.app.state.pool, tenant, execution_id)
                if data is None:
                    yield event({"reason": "gone"}, name="gone")
                    return
                html = timeline.fragment(data, tenant)
                if html != sent:
                    sent = html
                    yield event({"html": html, "status": data["execution"]["status"]}, name="timeline")
                elif data["execution"]["status"] in FINAL:
                    yield event({"status": data["execution"]["status"]}, name="finished")
                    return
                else:
                    yield ": ping\n\n"
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(subscription.get(), POLL_S)
        except (psycopg.Error, PoolTimeout, SubscriptionClosed):
            return  # the browser's EventSource reconnects


async def execution_live(request: Request) -> Response:
    principal = await signed_in(request)
    if isinstance(principal, str):
        return Response(principal, 401, media_type="text/plain")
    execution_id = int(request.path_params["id"])
    if execution_id > MAX_BIGINT:
        return Response("no such execution", 404, media_type="text/plain")
    return StreamingResponse(
        _events(request, tenant_of(request, principal), execution_id, principal.expires_at.timestamp()),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
