-- What an event did: the executions it started, the waits it resumed, and every reason it
-- started nothing (`conveyor events show` and `conveyor events list`).
--
-- Nothing on the hot path records this for the purpose; it is read back from what dispatch
-- and the waits write anyway, through existing indexes:
--   * started: dispatch creates an event's executions in the transaction that stamps it
--     dispatched (sql/dispatch.sql), so their created_at is its dispatched_at (both now()):
--     executions_tenant_time_idx, equality on (tenant_id, created_at);
--   * reasons (rate_limit, run_once, no_wait_matched, dispatch_error, budgets, ...): logged
--     by that same transaction with no execution: execution_logs_unattached_idx, equality on
--     (tenant_id, logged_at);
--   * resumed: a wait step's run records the event that answered it (output.event); see
--     conveyor.waits_resumed_by.

-- The waits that p_event_ids (events of p_tenant_id) answered: the completed runs of wait
-- steps whose output names the event. Only the tenant's wait steps for the events' types
-- (or entities, for wait_until) are looked at (workflow_steps_waits_idx), and only the
-- executions of their workflows that can have taken one of these events: those still
-- active (executions_workflow_active_idx) and those finished since the oldest of the events
-- occurred (executions_finished_idx). An execution finishes after its wait was answered, in
-- the answering transaction or later; that transaction may have begun before the event did
-- (its now() is its start), so an hour of slack covers a transaction open that long.
create or replace function conveyor.waits_resumed_by(p_tenant_id text, p_event_ids bigint[])
returns table (
  event_id bigint,
  execution_id bigint,
  workflow text,
  version integer,
  step_id text,
  visit integer,
  resumed_at timestamptz,
  status text
)
language plpgsql
stable
set search_path = ''
as $$
declare
  v_keys text[];
  v_since timestamptz;
  v_workflows bigint[];
  v_versions integer[];
  v_steps text[];
begin
  select
    array_agg(distinct k.key),
    min(e.occurred_at) - interval '1 hour'
  into v_keys, v_since
  from conveyor.events as e
  cross join lateral unnest(
    conveyor.event_match_keys(e.event_type) || ('entity:' || coalesce(e.entity_type, ''))
  ) as k (key)
  where e.tenant_id = p_tenant_id and e.event_id = any(p_event_ids);

  -- the tenant's wait steps these events could answer (most tenants have none: one probe)
  select array_agg(st.workflow_id), array_agg(st.version), array_agg(st.step_id)
  into v_workflows, v_versions, v_steps
  from conveyor.workflow_steps as st
  cross join lateral (
    select case when st.config ? st.kind then st.config -> st.kind else st.config end as spec
  ) as sp
  where st.tenant_id = p_tenant_id and st.kind in ('wait_for_event', 'wait_until')
    and case when st.kind = 'wait_until' then 'entity:' || (sp.spec ->> 'entity') else sp.spec ->> 'event' end
    = any(v_keys);
  if v_workflows is null then
    return;
  end if;

  return query
  with steps as (
    select distinct u.workflow_id, u.version, u.step_id
    from unnest(v_workflows, v_versions, v_steps) as u (workflow_id, version, step_id)
  ),

  candidates as (
    select x.execution_id, x.workflow_id, x.version, x.status
    from conveyor.executions as x
    where x.workflow_id = any(v_workflows) and x.status in ('pending', 'running', 'waiting')
    union
    select x.execution_id, x.workflow_id, x.version, x.status
    from conveyor.executions as x
    where x.tenant_id = p_tenant_id and x.finished_at >= v_since and x.workflow_id = any(v_workflows)
  )

  select
    (r.output #>> '{event,event_id}')::bigint, x.execution_id, w.slug, x.version, r.step_id, r.visit,
    r.finished_at, x.status
  from candidates as x
  inner join steps as s on s.workflow_id = x.workflow_id and s.version = x.version
  inner join conveyor.step_runs as r on r.execution_id = x.execution_id and r.step_id = s.step_id
  inner join conveyor.workflows as w on w.workflow_id = x.workflow_id
  where r.status = 'completed'
    and r.output #>> '{event,event_id}' = any(p_event_ids::text [])
  order by r.finished_at, x.execution_id, r.visit;
end;
$$;

revoke all on function conveyor.waits_resumed_by(text, bigint[]) from public;

-- An event's outcome in a few words, as `events list` shows it: "started 2", "resumed 1",
-- "started 1; no_wait_matched", "nothing: rate_limit", "nothing: no trigger matched" (it was
-- dispatched and no subscription took it: nothing is logged for that), "pending" (not
-- dispatched yet; a wait may already have taken it, looking back).
create or replace function conveyor.event_outcome(
  p_dispatched_at timestamptz,
  p_started integer,
  p_resumed integer,
  p_reasons text[]
) returns text
language sql
immutable
set search_path = ''
as $$
  select case
    when p_started > 0 or p_resumed > 0 or p_dispatched_at is null then concat_ws(
      '; ',
      case when p_started > 0 then 'started ' || p_started end,
      case when p_resumed > 0 then 'resumed ' || p_resumed end,
      nullif(array_to_string(p_reasons, ', '), ''),
      case when p_dispatched_at is null then 'pending' end
    )
    else 'nothing: ' || coalesce(nullif(array_to_string(p_reasons, ', '), ''), 'no trigger matched')
  end;
$$;

-- What each of p_event_ids (events of p_tenant_id) did: the executions it started, the waits
-- it resumed and the reasons logged for it (each a JSON array), the distinct reasons in the
-- order they were logged, and its outcome (conveyor.event_outcome). The executions and log
-- lines are read by the dispatch transactions' times, each once for all the events it
-- dispatched. Internal: the callers check the tenant.
create or replace function conveyor.event_effects(p_tenant_id text, p_event_ids bigint[])
returns table (
  event_id bigint,
  started jsonb,
  resumed jsonb,
  reasons jsonb,
  reason_names text[],
  outcome text
)
language plpgsql
stable
set search_path = ''
as $$
declare
  -- the times the events were dispatched: their executions' created_at, their reasons'
  -- logged_at (see the top of this file)
  v_batches timestamptz[] := array(
    select distinct e.dispatched_at
    from conveyor.events as e
    where e.tenant_id = p_tenant_id and e.event_id = any(p_event_ids) and e.dispatched_at is not null
  );
begin
  return query
  with events as (
    select e.event_id, e.dispatched_at
    from conveyor.events as e
    where e.tenant_id = p_tenant_id and e.event_id = any(p_event_ids)
  ),

  started as (
    select
      x.event_id,
      jsonb_agg(
        jsonb_build_object(
          'execution_id', x.execution_id, 'workflow', w.slug, 'version', x.version, 'status', x.status,
          'current_step', x.current_step, 'error', x.error ->> 'message'
        ) order by x.execution_id
      ) as list
    from conveyor.executions as x
    inner join events as e on e.event_id = x.event_id and e.dispatched_at = x.created_at
    inner join conveyor.workflows as w on w.workflow_id = x.workflow_id
    where x.tenant_id = p_tenant_id and x.created_at = any(v_batches) and x.event_id = any(p_event_ids)
    group by x.event_id
  ),

  resumed as (
    select r.event_id, jsonb_agg(to_jsonb(r) - 'event_id' order by r.resumed_at, r.execution_id, r.visit) as list
    from conveyor.waits_resumed_by(p_tenant_id, p_event_ids) as r
    group by r.event_id
  ),

  logged as (
    select
      l.event_id,
      jsonb_agg(
        jsonb_build_object(
          'logged_at', l.logged_at, 'level', l.level, 'reason', l.details ->> 'reason', 'workflow', w.slug,
          'message', l.message, 'details', l.details
        ) order by l.log_id
      ) as list,
      -- the distinct reasons, in the order they were first logged
      array(
        select u.reason
        from unnest(array_agg(l.details ->> 'reason' order by l.log_id)) with ordinality as u (reason, n)
        where u.reason is not null
        group by u.reason
        order by min(u.n)
      ) as names
    from conveyor.execution_logs as l
    inner join events as e on e.event_id = l.event_id and e.dispatched_at = l.logged_at
    left join conveyor.workflows as w on w.workflow_id = l.workflow_id
    where l.tenant_id = p_tenant_id and l.execution_id is null and l.logged_at = any(v_batches)
      and l.event_id = any(p_event_ids)
    group by l.event_id
  )

  select
    e.event_id,
    coalesce(s.list, '[]'),
    coalesce(r.list, '[]'),
    coalesce(l.list, '[]'),
    coalesce(l.names, '{}'),
    conveyor.event_outcome(
      e.dispatched_at,
      coalesce(jsonb_array_length(s.list), 0),
      coalesce(jsonb_array_length(r.list), 0),
      coalesce(l.names, '{}')
    )
  from events as e
  left join started as s on s.event_id = e.event_id
  left join resumed as r on r.event_id = e.event_id
  left join logged as l on l.event_id = e.event_id;
end;
$$;

revoke all on function conveyor.event_effects(text, bigint[]) from public;

-- One event of the tenant, for the functions that read or replay one; a clear error when
-- the tenant has no such event. The callers check the tenant first (conveyor.require_tenant).
create or replace function conveyor.tenant_event(p_tenant_id text, p_event_id bigint)
returns conveyor.events
language plpgsql
stable
set search_path = ''
as $$
declare
  v_event conveyor.events;
begin
  select * into v_event
  from conveyor.events as e
  where e.event_id = p_event_id and e.tenant_id = p_tenant_id;
  if not found then
    raise exception using errcode = '22023',
      message = format('event %s does not exist for tenant "%s"', p_event_id, p_tenant_id);
  end if;
  return v_event;
end;
$$;

revoke all on function conveyor.tenant_event(text, bigint) from public;

-- One event of a tenant, explained: the event (its payload as it was captured or emitted),
-- its outcome, the executions it started ({execution_id, workflow, version, status, ...}),
-- the waits it resumed ({execution_id, workflow, version, step_id, visit, resumed_at,
-- status}) and every reason logged for it ({logged_at, level, reason, workflow, message,
-- details}): why it started nothing for a workflow (run_once, rate_limit,
-- concurrency_limit, condition_error, the budgets), no_wait_matched, depth_limit,
-- dispatch_error. For applications too (checks the tenant).
create or replace function conveyor.explain_event(p_tenant_id text, p_event_id bigint)
returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_event conveyor.events;
  v_effects record;
begin
  perform conveyor.require_tenant(p_tenant_id);
  v_event := conveyor.tenant_event(p_tenant_id, p_event_id);
  select * into v_effects from conveyor.event_effects(p_tenant_id, array[p_event_id]);
  return jsonb_build_object(
    'event', to_jsonb(v_event) - 'tenant_id',
    'outcome', v_effects.outcome,
    'started', v_effects.started,
    'resumed', v_effects.resumed,
    'reasons', v_effects.reasons,
    -- each workflow the event's type reaches, and what happened for it (sql/trigger_verdict.sql)
    'workflows', conveyor.event_subscribers(p_tenant_id, v_event, v_effects.started, v_effects.reasons)
  );
end;
$$;

-- A tenant's latest events (of one type, given p_type), newest first (by occurred_at, then
-- id: events_tenant_time_idx or events_tenant_type_time_idx), each with what it did
-- (conveyor.event_effects): how many executions it started and waits it resumed, the
-- reasons logged for it, and its outcome. At most p_limit (1 to 1000) events. For
-- applications too (checks the tenant).
create or replace function conveyor.list_events(
  p_tenant_id text,
  p_type text default null,
  p_limit integer default 50
)
returns table (
  event_id bigint,
  event_type text,
  source text,
  entity_type text,
  entity_id text,
  depth integer,
  occurred_at timestamptz,
  dispatched_at timestamptz,
  started integer,
  resumed integer,
  reasons text[],
  outcome text
)
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_ids bigint[];
begin
  perform conveyor.require_tenant(p_tenant_id);
  if p_limit is null or p_limit not between 1 and 1000 then
    raise exception using errcode = '22023',
      message = format('limit %s is out of range: list 1 to 1000 events', coalesce(p_limit::text, 'null'));
  end if;
  -- two statements rather than "p_type is null or ...": each has its own index
  if p_type is null then
    v_ids := array(
      select e.event_id from conveyor.events as e
      where e.tenant_id = p_tenant_id
      order by e.occurred_at desc, e.event_id desc
      limit p_limit
    );
  else
    v_ids := array(
      select e.event_id from conveyor.events as e
      where e.tenant_id = p_tenant_id and e.event_type = p_type
      order by e.occurred_at desc, e.event_id desc
      limit p_limit
    );
  end if;

  return query
  select
    e.event_id, e.event_type, e.source, e.entity_type, e.entity_id, e.depth, e.occurred_at, e.dispatched_at,
    jsonb_array_length(f.started), jsonb_array_length(f.resumed), f.reason_names, f.outcome
  from conveyor.events as e
  inner join conveyor.event_effects(p_tenant_id, v_ids) as f on f.event_id = e.event_id
  where e.event_id = any(v_ids)
  order by e.occurred_at desc, e.event_id desc;
end;
$$;
