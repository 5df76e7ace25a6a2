-- Reading executions and workflows as a person sees them: what `conveyor executions
-- list|show` and `conveyor workflows list|show` print, for one tenant.
--
-- The CLI reads through these functions, never the tables, so what it shows is tested
-- here (tests/sql/test_inspection.py) and a platform's own console can show the same.
-- Each is tenant-checked (conveyor.require_tenant) and reads only p_tenant_id's rows;
-- the application role may call them: they show it nothing beyond what row-level
-- security already lets it select, in a shape that does not follow the tables' layout.
-- A row that does not exist for the tenant is no row, not an error: the caller words it.

-- The tenant's executions created after p_since (null: ever), newest first.

create or replace function conveyor.list_executions(
  p_tenant_id text,
  p_status text default null,
  p_workflow text default null,
  p_since timestamptz default now() - interval '24 hours',
  p_limit integer default 50
) returns table (
  id bigint,
  workflow text,
  version integer,
  status text,
  step text,
  entity_id text,
  created_at timestamptz,
  ms numeric,
  error text
)
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  perform conveyor.require_tenant(p_tenant_id);
  if p_status is not null
    and p_status not in ('pending', 'running', 'waiting', 'completed', 'failed', 'cancelled', 'timed_out') then
    raise exception using
      errcode = '22023',
      message = format('p_status: %L is not an execution status', p_status),
      hint = 'One of pending, running, waiting, completed, failed, cancelled, timed_out; or null for all.';
  end if;
  if p_limit is null or p_limit < 0 then
    raise exception using
      errcode = '22023',
      message = format('p_limit: %s is not a number of executions (0 or more)', coalesce(p_limit::text, 'null'));
  end if;
  return query
  select
    -- a paused execution shows as paused (its status is where it will resume)
    x.execution_id, w.slug, x.version, case when x.paused_at is not null then 'paused' else x.status end,
    x.current_step, x.entity_id, x.created_at,
    round(extract(epoch from coalesce(x.finished_at, now()) - x.created_at) * 1000),
    x.error ->> 'message'
  from conveyor.executions as x
  join conveyor.workflows as w on w.workflow_id = x.workflow_id
  where
    x.tenant_id = p_tenant_id and (p_since is null or x.created_at > p_since)
    and (p_status is null or x.status = p_status) and (p_workflow is null or w.slug = p_workflow)
    -- a branch or an item of a fan-out is part of its parent's run (execution_children)
    and x.item is null
  order by x.execution_id desc
  limit p_limit;
end;
$$;

-- One execution of the tenant, every column, with its workflow's slug.
drop function if exists conveyor.execution_detail(text, bigint);
create or replace function conveyor.execution_detail(p_tenant_id text, p_execution_id bigint)
returns table (
  execution_id bigint,
  tenant_id text,
  workflow_id bigint,
  version integer,
  event_id bigint,
  entity_type text,
  entity_id text,
  once_key text,
  status text,
  current_step text,
  wait_kind text,
  resume_at timestamptz,
  trigger jsonb,
  vars jsonb,
  step_outputs jsonb,
  depth integer,
  steps_run integer,
  error jsonb,
  created_at timestamptz,
  started_at timestamptz,
  finished_at timestamptz,
  timeout_at timestamptz,
  retry_of bigint,
  paused_at timestamptz,
  parent_execution_id bigint,
  fanout_id bigint,
  child_index integer,
  item jsonb,
  flow_key text,
  slug text
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
    x.execution_id, x.tenant_id, x.workflow_id, x.version, x.event_id, x.entity_type, x.entity_id,
    x.once_key, x.status, x.current_step, x.wait_kind, x.resume_at,
    -- a branch's or an item's trigger is its fan-out's (sql/fanout.sql)
    case when x.item is not null and f.fanout_id is not null then f.context -> 'trigger' else x.trigger end,
    x.vars, x.step_outputs,
    x.depth, x.steps_run, x.error, x.created_at, x.started_at, x.finished_at, x.timeout_at, x.retry_of,
    x.paused_at, x.parent_execution_id, x.fanout_id, x.child_index, x.item, x.flow_key, w.slug
  from conveyor.executions as x
  join conveyor.workflows as w on w.workflow_id = x.workflow_id
  left join conveyor.fanouts as f on f.fanout_id = x.fanout_id
  where x.execution_id = p_execution_id and x.tenant_id = p_tenant_id;
end;
$$;

-- The children of an execution's fan-out steps (sql/fanout.sql), by step and place: a
-- branch's name, an item's index, a call's workflow; with their own children's count.
create or replace function conveyor.execution_children(p_tenant_id text, p_execution_id bigint)
returns table (
  step text,
  visit integer,
  kind text,
  child_index integer,
  label text,
  execution_id bigint,
  workflow text,
  status text,
  current_step text,
  started_at timestamptz,
  finished_at timestamptz,
  error jsonb,
  children bigint
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
    f.step_id, f.visit, f.kind, c.child_index,
    case f.kind when 'parallel' then c.item ->> 'branch' when 'for_each' then 'item ' || c.child_index else w.slug end,
    c.execution_id, w.slug, c.status, c.current_step, c.started_at, c.finished_at, c.error,
    (select count(*) from conveyor.executions as g where g.parent_execution_id = c.execution_id)
  from conveyor.fanouts as f
  join conveyor.executions as c on c.fanout_id = f.fanout_id
  join conveyor.workflows as w on w.workflow_id = c.workflow_id
  where f.execution_id = p_execution_id and f.tenant_id = p_tenant_id
  order by f.fanout_id, c.child_index;
end;
$$;

-- Every run of every step of the execution, in the order they started, with timings,
-- rendered input, output and error.
create or replace function conveyor.execution_timeline(p_tenant_id text, p_execution_id bigint)
returns table (
  step text,
  visit integer,
  attempt integer,
  status text,
  started_at timestamptz,
  ms numeric,
  input jsonb,
  output jsonb,
  error jsonb
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
    r.step_id, r.visit, r.attempt, r.status, r.started_at,
    round(extract(epoch from r.finished_at - r.started_at) * 1000), r.input, r.output, r.error
  from conveyor.step_runs as r
  where r.execution_id = p_execution_id and r.tenant_id = p_tenant_id
  order by r.step_run_id;
end;
$$;

-- The execution's operator log lines (retries, failures, what a step decided), oldest first.
create or replace function conveyor.execution_log(p_tenant_id text, p_execution_id bigint)
returns table (logged_at timestamptz, level text, message text)
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  perform conveyor.require_tenant(p_tenant_id);
  return query
  select l.logged_at, l.level, l.message
  from conveyor.execution_logs as l
  where l.execution_id = p_execution_id and l.tenant_id = p_tenant_id
  order by l.log_id;
end;
$$;

-- The tenant's workflows by slug, each with what starts it: its event pattern, cron,
-- webhook, date trigger, or (none of these) manual runs only.
create or replace function conveyor.list_workflows(p_tenant_id text)
returns table (
  slug text,
  name text,
  active boolean,
  version integer,
  category text,
  trigger text,
  updated_at timestamptz
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
    w.slug, w.name, w.active, w.current_version, w.category,
    coalesce(
      s.match_key,
      case when sc.cron is not null then 'cron ' || sc.cron end,
      case when wh.endpoint_id is not null then 'webhook' end,
      case when dt.workflow_id is not null then 'date ' || dt.entity || '.' || dt.date_column end,
      'manual'
    ),
    w.updated_at
  from conveyor.workflows as w
  left join conveyor.subscriptions as s on s.workflow_id = w.workflow_id and s.version = w.current_version
  left join conveyor.schedules as sc on sc.workflow_id = w.workflow_id
  left join conveyor.webhook_endpoints as wh on wh.workflow_id = w.workflow_id
  left join conveyor.date_triggers as dt on dt.workflow_id = w.workflow_id
  where w.tenant_id = p_tenant_id
  order by w.slug;
end;
$$;

-- One workflow of the tenant, every column.
create or replace function conveyor.workflow_detail(p_tenant_id text, p_slug text)
returns table (
  workflow_id bigint,
  tenant_id text,
  slug text,
  name text,
  description text,
  category text,
  tags text[],
  active boolean,
  current_version integer,
  created_at timestamptz,
  updated_at timestamptz
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
    w.workflow_id, w.tenant_id, w.slug, w.name, w.description, w.category, w.tags, w.active,
    w.current_version, w.created_at, w.updated_at
  from conveyor.workflows as w
  where w.tenant_id = p_tenant_id and w.slug = p_slug;
end;
$$;

-- A version's compiled steps in document order (p_version null: the current version).
create or replace function conveyor.compiled_steps(p_tenant_id text, p_slug text, p_version integer default null)
returns table (
  step_id text,
  kind text,
  action text,
  next_step text,
  branches jsonb,
  on_error text
)
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  perform conveyor.require_tenant(p_tenant_id);
  return query
  select s.step_id, s.kind, coalesce(s.action_type, ''), s.next_step, s.branches, s.on_error
  from conveyor.workflows as w
  join conveyor.workflow_steps as s
    on s.workflow_id = w.workflow_id and s.version = coalesce(p_version, w.current_version)
  where w.tenant_id = p_tenant_id and w.slug = p_slug
  order by s.position;
end;
$$;

-- Every version of the workflow with when it was published, oldest first.
create or replace function conveyor.published_versions(p_tenant_id text, p_slug text)
returns table (version integer, published_at timestamptz)
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  perform conveyor.require_tenant(p_tenant_id);
  return query
  select v.version, v.published_at
  from conveyor.workflows as w
  join conveyor.workflow_versions as v on v.workflow_id = w.workflow_id
  where w.tenant_id = p_tenant_id and w.slug = p_slug
  order by v.version;
end;
$$;
