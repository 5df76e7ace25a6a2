"""GET /metrics of `conveyor serve`: the database's side in Prometheus text format
(docs/metrics.md): queue depth and oldest message per queue, events waiting for dispatch,
active executions by status, executions finished in the last hour by status, failures per
workflow in the last hour, and schedule lag. Every series is read when scraped, by one
query each, bounded (an hour's window, at most MAX_SERIES workflows).

It names every tenant's workflows, so it takes an operator's user token (tokens.py:
`Authorization: Bearer <token with operator: true>`, Prometheus' `authorization`)."""

from __future__ import annotations

import json
from typing import Any

from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from conveyor.serve.user_auth import authenticated_user

MAX_SERIES = 500

QUEUES = """
select queue_name, queue_length, coalesce(oldest_msg_age_sec, 0) as oldest, queue_visible_length
from pgmq.metrics_all() order by queue_name
"""
PENDING_EVENTS = "select count(*) from conveyor.events where dispatched_at is null"
ACTIVE = """
select s.status, count(x.execution_id)
from unnest(array['pending', 'running', 'waiting']) as s(status)
left join conveyor.executions as x on x.status = s.status
group by s.status order by s.status
"""
FINISHED = """
select x.status, count(*) from conveyor.executions as x
where x.finished_at > now() - interval '1 hour' group by x.status order by x.status
"""
FAILURES = """
select x.tenant_id, w.slug, count(*) from conveyor.executions as x
join conveyor.workflows as w on w.workflow_id = x.workflow_id
where x.finished_at > now() - interval '1 hour' and x.status in ('failed', 'timed_out')
group by x.tenant_id, w.slug order by count(*) desc, x.tenant_id, w.slug limit %s
"""
SCHEDULE_LAG = """
select coalesce(max(extract(epoch from now() - next_run_at)), 0)
from conveyor.schedules where active and next_run_at < now()
"""


def _q(value: Any) -> str:
    return json.dumps(str(value))  # a quoted, escaped label value


async def render(pool: AsyncConnectionPool[Any]) -> str:
    async with pool.connection() as conn:

        async def all_rows(query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
            return list(await (await conn.execute(query, params)).fetchall())

        queues = await all_rows(QUEUES)
        [(pending,)] = await all_rows(PENDING_EVENTS)
        active = await all_rows(ACTIVE)
        finished = await all_rows(FINISHED)
        failures = await all_rows(FAILURES, (MAX_SERIES,))
        [(lag,)] = await all_rows(SCHEDULE_LAG)
    # (name, help, [(labels, value)]) for each family; all gauges
    families: list[tuple[str, str, list[tuple[str, Any]]]] = [
        ("conveyor_queue_depth", "Messages in a queue.", [(f"queue={_q(q)}", n) for q, n, _, _ in queues]),
        (
            "conveyor_queue_visible",
            "Messages in a queue a runner may read now.",
            [(f"queue={_q(q)}", v) for q, _, _, v in queues],
        ),
        (
            "conveyor_queue_oldest_age_seconds",
            "Age of a queue's oldest message.",
            [(f"queue={_q(q)}", age) for q, _, age, _ in queues],
        ),
        ("conveyor_events_pending", "Events not yet dispatched.", [("", pending)]),
        (
            "conveyor_executions_active",
            "Executions not finished, by status.",
            [(f"status={_q(s)}", n) for s, n in active],
        ),
        (
            "conveyor_executions_finished_last_hour",
            "Executions finished in the last hour, by status.",
            [(f"status={_q(s)}", n) for s, n in finished],
        ),
        (
            "conveyor_workflow_failures_last_hour",
            f"Failed or timed-out executions in the last hour, by tenant and workflow (at most {MAX_SERIES}).",
            [(f"tenant={_q(t)},workflow={_q(w)}", n) for t, w, n in failures],
        ),
        (
            "conveyor_schedule_lag_seconds",
            "How late the most overdue active schedule is.",
            [("", float(lag))],
        ),
    ]
    lines: list[str] = []
    for name, text, samples in families:
        lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge"]
        lines += [f"{name}{{{labels}}} {value}" if labels else f"{name} {value}" for labels, value in samples]
    return "\n".join(lines) + "\n"


async def metrics(request: Request) -> Response:
    principal = await authenticated_user(request)
    if isinstance(principal, Response):
        return principal
    if not principal.operator:
        return JSONResponse({"error": "/metrics takes an operator's token (the operator claim)"}, 403)
    return PlainTextResponse(await render(request.app.state.pool), media_type="text/plain; version=0.0.4")


METRICS_ROUTES = [Route("/metrics", metrics, methods=["GET"])]
