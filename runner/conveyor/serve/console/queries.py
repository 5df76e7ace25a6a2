"""What the console reads. Every query names its tenant (`tenant_id = %(tenant)s`), so a
tenant's admin reads only their tenant even though `conveyor serve` connects as the owner
(tests/e2e/test_console_http.py checks each page against a second tenant). Every list has a
cap and pages by keyset (`execution_id < before`), never by offset; charts read bounded
windows (the last 24 hours by hour, or 14 days by day)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
STATUSES = ("pending", "running", "waiting", "completed", "failed", "cancelled", "timed_out")

Row = dict[str, Any]


async def rows(pool: AsyncConnectionPool[Any], query: str, params: dict[str, Any]) -> list[Row]:
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params)
        found: list[Row] = await cur.fetchall()
        return found


WORKFLOWS = """
select w.slug, w.name, w.active,
  count(x.execution_id) as runs,
  round(100.0 * count(*) filter (where x.status = 'completed')
    / nullif(count(*) filter (where x.finished_at is not null), 0), 1) as success_rate,
  round((percentile_cont(0.5) within group (order by extract(epoch from x.finished_at - x.created_at) * 1000))::numeric) as p50_ms,
  round((percentile_cont(0.95) within group (order by extract(epoch from x.finished_at - x.created_at) * 1000))::numeric) as p95_ms,
  (select x2.error ->> 'message' from conveyor.executions as x2
    where x2.workflow_id = w.workflow_id and x2.tenant_id = %(tenant)s and x2.status in ('failed', 'timed_out')
    order by x2.execution_id desc limit 1) as last_error
from conveyor.workflows as w
left join conveyor.executions as x
  on x.workflow_id = w.workflow_id and x.tenant_id = %(tenant)s and x.created_at >= now() - interval '24 hours'
  and x.item is null
where w.tenant_id = %(tenant)s
group by w.workflow_id
order by w.slug
limit %(limit)s
"""

# Runs and failures per hour over the last 24 hours, for every workflow shown.
CHART = """
select w.slug, b.at, count(x.execution_id) as runs,
  count(x.execution_id) filter (where x.status in ('failed', 'timed_out')) as failed
from conveyor.workflows as w
cross join generate_series(date_trunc('hour', now()) - interval '23 hours', date_trunc('hour', now()),
  interval '1 hour') as b(at)
left join conveyor.executions as x
  on x.workflow_id = w.workflow_id and x.tenant_id = %(tenant)s and x.item is null
  and x.created_at >= b.at and x.created_at < b.at + interval '1 hour'
where w.tenant_id = %(tenant)s and w.slug = any(%(slugs)s)
group by w.slug, b.at
order by w.slug, b.at
"""

EXECUTIONS = """
select x.execution_id, w.slug, w.name, x.status, x.current_step, x.entity_type, x.entity_id,
  x.created_at, round(extract(epoch from coalesce(x.finished_at, now()) - x.created_at) * 1000) as ms,
  x.error ->> 'message' as error
from conveyor.executions as x
join conveyor.workflows as w on w.workflow_id = x.workflow_id
where x.tenant_id = %(tenant)s and x.item is null
  and (%(workflow)s::text is null or w.slug = %(workflow)s)
  and (%(status)s::text is null or x.status = %(status)s)
  and (%(entity)s::text is null or x.entity_id = %(entity)s)
  and (%(since)s::timestamptz is null or x.created_at >= %(since)s)
  and (%(until)s::timestamptz is null or x.created_at < %(until)s)
  and (%(before)s::bigint is null or x.execution_id < %(before)s)
order by x.execution_id desc
limit %(limit)s
"""

EXECUTION = """
select x.execution_id, x.tenant_id, w.slug, w.name, x.version, x.status, x.current_step, x.wait_kind,
  x.entity_type, x.entity_id, x.event_id, x.parent_execution_id, x.created_at, x.started_at,
  x.finished_at, x.error
from conveyor.executions as x
join conveyor.workflows as w on w.workflow_id = x.workflow_id
where x.execution_id = %(id)s and x.tenant_id = %(tenant)s
"""

STEPS = """
select r.step_run_id, r.step_id, r.visit, r.attempt, r.status, r.started_at, r.finished_at,
  round(extract(epoch from r.finished_at - r.started_at) * 1000) as ms, r.input, r.output, r.error
from conveyor.step_runs as r
where r.execution_id = %(id)s and r.tenant_id = %(tenant)s
order by r.step_run_id
limit %(limit)s
"""

CHILDREN = """
select c.execution_id, f.step_id, f.kind, c.child_index, w.slug, c.status, c.created_at, c.finished_at,
  c.error ->> 'message' as error
from conveyor.fanouts as f
join conveyor.executions as c on c.fanout_id = f.fanout_id and c.tenant_id = %(tenant)s
join conveyor.workflows as w on w.workflow_id = c.workflow_id
where f.execution_id = %(id)s and f.tenant_id = %(tenant)s
order by f.fanout_id, c.child_index
limit %(limit)s
"""

# Events and what dispatch did with them: the executions they started, and the log lines
# (refusals, skips: docs/flow-control.md) dispatch wrote about them.
EVENTS = """
select e.event_id, e.event_type, e.entity_type, e.entity_id, e.occurred_at, e.dispatched_at,
  (select coalesce(jsonb_agg(jsonb_build_object('id', x.execution_id, 'status', x.status)), '[]')
     from (select execution_id, status from conveyor.executions
           where event_id = e.event_id and tenant_id = %(tenant)s order by execution_id limit 20) as x) as started,
  (select coalesce(jsonb_agg(jsonb_build_object('level', l.level, 'message', l.message)), '[]')
     from (select level, message from conveyor.execution_logs
           where event_id = e.event_id and tenant_id = %(tenant)s order by log_id limit 20) as l) as why
from conveyor.events as e
where e.tenant_id = %(tenant)s and (%(before)s::bigint is null or e.event_id < %(before)s)
order by e.event_id desc
limit %(limit)s
"""

DEAD_LETTERS = """
select dead_letter_id, execution_id, step_id, reason, last_error, attempts, dead_at
from conveyor.dead_letters
where tenant_id = %(tenant)s and (%(before)s::bigint is null or dead_letter_id < %(before)s)
order by dead_letter_id desc
limit %(limit)s
"""


def since_param(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None
