-- Analytics and status: what `conveyor stats` and `conveyor status` show.
-- Counters come from the sharded conveyor.workflow_stats; durations and errors from the
-- executions of the period asked for.

create or replace function conveyor.workflow_summary(
  p_tenant_id text,
  p_slug text default null,
  p_since timestamptz default now() - interval '7 days'
) returns table (
  slug text,
  active boolean,
  runs bigint,
  completed bigint,
  failed bigint,
  success_rate numeric,
  avg_ms numeric,
  p95_ms numeric,
  last_run_at timestamptz,
  last_error text,
  total_started bigint
)
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  perform conveyor.require_tenant(p_tenant_id);
  return query
  select
    w.slug, w.active,
    count(x.execution_id),
    count(x.execution_id) filter (where x.status = 'completed'),
    count(x.execution_id) filter (where x.status in ('failed', 'timed_out')),
    round(100.0 * count(x.execution_id) filter (where x.status = 'completed')
      / nullif(count(x.execution_id) filter (where x.finished_at is not null), 0), 1),
    round(avg(extract(epoch from x.finished_at - x.started_at) * 1000)::numeric, 1),
    round((percentile_cont(0.95) within group (
      order by extract(epoch from x.finished_at - x.started_at) * 1000))::numeric, 1),
    max(x.created_at),
    (select x2.error ->> 'message' from conveyor.executions as x2
      where x2.workflow_id = w.workflow_id and x2.status in ('failed', 'timed_out')
      order by x2.finished_at desc limit 1),
    (select sum(s.started)::bigint from conveyor.workflow_stats as s where s.workflow_id = w.workflow_id)
  from conveyor.workflows as w
  left join conveyor.executions as x on x.workflow_id = w.workflow_id and x.created_at >= p_since
  where w.tenant_id = p_tenant_id and (p_slug is null or w.slug = p_slug)
  group by w.workflow_id, w.slug, w.active
  order by w.slug;
end;
$$;

create or replace function conveyor.top_errors(
  p_tenant_id text,
  p_since timestamptz default now() - interval '7 days',
  p_limit integer default 10
) returns table (slug text, step_id text, message text, occurrences bigint, last_seen timestamptz)
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  perform conveyor.require_tenant(p_tenant_id);
  return query
  select w.slug, r.step_id, r.error ->> 'message', count(*), max(r.finished_at)
  from conveyor.step_runs as r
  join conveyor.executions as x on x.execution_id = r.execution_id
  join conveyor.workflows as w on w.workflow_id = x.workflow_id
  where r.tenant_id = p_tenant_id and r.status = 'failed' and r.started_at >= p_since
  group by w.slug, r.step_id, r.error ->> 'message'
  order by count(*) desc, max(r.finished_at) desc
  limit p_limit;
end;
$$;

create or replace function conveyor.slowest_steps(
  p_tenant_id text,
  p_since timestamptz default now() - interval '7 days',
  p_limit integer default 10
) returns table (slug text, step_id text, runs bigint, failures bigint, avg_ms numeric, p95_ms numeric)
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  perform conveyor.require_tenant(p_tenant_id);
  return query
  select w.slug, r.step_id, count(*), count(*) filter (where r.status = 'failed'),
    round(avg(extract(epoch from r.finished_at - r.started_at) * 1000)::numeric, 1),
    round((percentile_cont(0.95) within group (
      order by extract(epoch from r.finished_at - r.started_at) * 1000))::numeric, 1)
  from conveyor.step_runs as r
  join conveyor.executions as x on x.execution_id = r.execution_id
  join conveyor.workflows as w on w.workflow_id = x.workflow_id
  where r.tenant_id = p_tenant_id and r.finished_at is not null and r.started_at >= p_since
  group by w.slug, r.step_id
  order by 6 desc nulls last
  limit p_limit;
end;
$$;

-- The whole installation at a glance (operators: service role).
create or replace function conveyor.system_status()
returns jsonb
language sql
stable
set search_path = ''
as $$
  select jsonb_build_object(
    'queue_depth', (select count(*) from pgmq.q_conveyor_actions),
    'queue_visible', (select count(*) from pgmq.q_conveyor_actions where vt <= now()),
    'oldest_message_age_s', (
      select round(extract(epoch from now() - min(enqueued_at))::numeric, 1) from pgmq.q_conveyor_actions
    ),
    'pending_events', (select count(*) from conveyor.events where dispatched_at is null),
    'executions_last_hour', (
      select coalesce(jsonb_object_agg(status, n), '{}') from (
        select status, count(*) as n from conveyor.executions
        where created_at > now() - interval '1 hour' group by status
      ) as s
    ),
    'waiting', (select count(*) from conveyor.executions where status = 'waiting'),
    'next_schedules', (
      select coalesce(jsonb_agg(jsonb_build_object(
        'tenant', s.tenant_id, 'workflow', w.slug, 'cron', s.cron, 'timezone', s.timezone,
        'next_run_at', s.next_run_at) order by s.next_run_at), '[]')
      from (select * from conveyor.schedules where active order by next_run_at limit 5) as s
      join conveyor.workflows as w on w.workflow_id = s.workflow_id
    ),
    'runners', (
      select coalesce(jsonb_agg(jsonb_build_object(
        'runner_id', r.runner_id, 'hostname', r.hostname, 'pid', r.pid, 'version', r.version,
        'last_seen_at', r.last_seen_at)), '[]')
      from conveyor.live_runners() as r
    )
  );
$$;

-- One tenant at a glance (`conveyor status --tenant`): its events waiting for dispatch, its
-- executions in the last hour by status, its waiting and paused ones, its next schedules.
-- The action queue and the runners are shared by every tenant: system_status has them.
create or replace function conveyor.tenant_status(p_tenant_id text)
returns jsonb
language plpgsql
stable
set search_path = ''
as $$
begin
  if not exists (select from conveyor.tenants as t where t.tenant_id = p_tenant_id) then
    raise exception using errcode = 'P0002', message = format('tenant "%s" does not exist', p_tenant_id);
  end if;
  return jsonb_build_object(
    'tenant', p_tenant_id,
    'pending_events', (
      select count(*) from conveyor.events as e where e.dispatched_at is null and e.tenant_id = p_tenant_id
    ),
    'executions_last_hour', (
      select coalesce(jsonb_object_agg(s.status, s.n), '{}') from (
        select x.status, count(*) as n from conveyor.executions as x
        where x.tenant_id = p_tenant_id and x.created_at > now() - interval '1 hour' group by x.status
      ) as s
    ),
    'waiting', (
      select count(*) from conveyor.executions as x where x.tenant_id = p_tenant_id and x.status = 'waiting'
    ),
    'paused', (
      select count(*) from conveyor.executions as x
      where x.tenant_id = p_tenant_id and x.paused_at is not null
        and x.status in ('pending', 'running', 'waiting')
    ),
    'next_schedules', (
      select coalesce(jsonb_agg(jsonb_build_object(
        'tenant', s.tenant_id, 'workflow', w.slug, 'cron', s.cron, 'timezone', s.timezone,
        'next_run_at', s.next_run_at) order by s.next_run_at), '[]')
      from (
        select * from conveyor.schedules as c where c.active and c.tenant_id = p_tenant_id
        order by c.next_run_at limit 5
      ) as s
      inner join conveyor.workflows as w on w.workflow_id = s.workflow_id
    )
  );
end;
$$;

revoke all on function conveyor.tenant_status(text) from public;
