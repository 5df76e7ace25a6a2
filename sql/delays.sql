-- Resuming executions whose delay is over or whose wait for an event timed out.
-- Driven by the runner's tick (and pg_cron every minute as a safety net); the clock is a
-- parameter so tests move time instead of sleeping.

-- When the next execution waiting on time (a delay, or an event wait's timeout) is due;
-- null when none is. Paused executions are not counted: they resume when unpaused.
-- The runner sleeps until then (conveyor.tick() reports it), so a delay resumes on time
-- rather than on the next poll.
create or replace function conveyor.next_due_at()
returns timestamptz
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  -- plpgsql, not sql: the query has no parameters, so its plan is made once per session
  return (
    select e.resume_at
    from conveyor.executions as e
    where e.status = 'waiting' and e.wait_kind in ('delay', 'event') and e.paused_at is null
      and e.resume_at is not null
    order by e.resume_at, e.execution_id
    limit 1
  );
end;
$$;

revoke all on function conveyor.next_due_at() from public;
grant execute on function conveyor.next_due_at() to conveyor_service;

-- Claims up to p_limit due executions (oldest resume_at first, skip locked), moves each
-- past its delay (next_step) or wait (the timeout branch), and runs it on.
-- Returns how many executions were resumed.
create or replace function conveyor.resume_due(p_now timestamptz default now(), p_limit integer default 1000)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_ids bigint[];
begin
  -- Nothing due is the common case (the runner ticks often): answer it with one probe of
  -- executions_due_scan_idx. The statement below has parameters, and once many
  -- executions wait the planner prefers a custom plan for it, i.e. plans it on every call;
  -- that cost grew with the number of waiting executions even when nothing was due.
  if not coalesce(conveyor.next_due_at() <= p_now, false) then
    return 0;
  end if;

  with due as (
    select e.execution_id, e.workflow_id, e.version, e.current_step, e.wait_kind
    from conveyor.executions as e
    where e.status = 'waiting' and e.wait_kind in ('delay', 'event') and e.resume_at <= p_now
      and e.paused_at is null
    order by e.resume_at, e.execution_id
    limit p_limit
    for update skip locked
  ),

  target as (
    select
      d.execution_id,
      d.current_step,
      d.wait_kind,
      case
        when d.wait_kind = 'event' and s.branches ? 'timeout' then s.branches ->> 'timeout'
        else s.next_step
      end as next_step
    from due as d
    join conveyor.workflow_steps as s
      on s.workflow_id = d.workflow_id and s.version = d.version and s.step_id = d.current_step
  ),

  runs as (
    update conveyor.step_runs as r
    set
      status = 'completed',
      finished_at = now(),
      next_step = t.next_step,
      output = coalesce(r.output, '{}')
      || case when t.wait_kind = 'event' then '{"timed_out": true, "event": null}'::jsonb else '{}'::jsonb end
      || jsonb_build_object('resumed_at', p_now)
    from target as t
    where r.execution_id = t.execution_id and r.step_id = t.current_step and r.status = 'running'
    returning r.execution_id, r.output
  ),

  moved as (
    update conveyor.executions as e
    set
      status = 'running',
      wait_kind = null,
      resume_at = null,
      current_step = t.next_step,
      step_outputs = e.step_outputs || jsonb_build_object(t.current_step, jsonb_build_object('output', ru.output))
    from target as t
    left join runs as ru on ru.execution_id = t.execution_id
    where e.execution_id = t.execution_id
    returning e.execution_id
  )

  select array_agg(m.execution_id order by m.execution_id) into v_ids from moved as m;

  -- Each resumed execution runs on to its next stopping point (see run_executions).
  if v_ids is not null then
    perform conveyor.advance_executions(v_ids, p_now);
  end if;
  return coalesce(cardinality(v_ids), 0);
end;
$$;

revoke all on function conveyor.resume_due(timestamptz, integer) from public;
grant execute on function conveyor.resume_due(timestamptz, integer) to conveyor_service;

-- Resumes executions waiting for an event (wait_for_event) that one of p_event_ids answers:
-- same tenant, the awaited event type, and every "match" entry (a dotted path into the
-- trigger object, e.g. "entity_id" or "payload.contact_id", rendered when the wait began)
-- equal as text. Such an execution takes its "event" branch and sees the event as
-- {{steps.<id>.output.event}}. Dispatch calls this with the events it just claimed.
-- Returns how many executions were resumed.
create or replace function conveyor.resume_waiting_for_events(p_event_ids bigint[])
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_ids bigint[];
  -- the tenants of these events waiting executions could belong to
  v_tenants text[] := array(
    select distinct ev.tenant_id from conveyor.events as ev where ev.event_id = any(p_event_ids)
  );
begin
  -- most dispatches find no execution waiting for an event of these tenants: say so with
  -- one probe of the partial index rather than the statement below
  if not exists (
    select from conveyor.executions as x
    where x.status = 'waiting' and x.wait_kind = 'event' and x.tenant_id = any(v_tenants)
  ) then
    return 0;
  end if;
  with waiting as (
    select x.execution_id, x.tenant_id, x.workflow_id, x.version, x.current_step
    from conveyor.executions as x
    where x.status = 'waiting' and x.wait_kind = 'event' and x.tenant_id = any(v_tenants)
    for update skip locked
  ),

  matched as (
    -- the first matching event per execution
    select distinct on (w.execution_id)
      w.execution_id,
      w.current_step,
      r.step_run_id,
      conveyor.event_trigger_object(ev) as event,
      case when s.branches ? 'event' then s.branches ->> 'event' else s.next_step end as next_step
    from waiting as w
    join conveyor.step_runs as r
      on r.execution_id = w.execution_id and r.step_id = w.current_step and r.status = 'running'
    join conveyor.workflow_steps as s
      on s.workflow_id = w.workflow_id and s.version = w.version and s.step_id = w.current_step
    join conveyor.events as ev
      on ev.event_id = any(p_event_ids) and ev.tenant_id = w.tenant_id and ev.event_type = r.input ->> 'event'
    where not exists (
      select
      from jsonb_each(coalesce(r.input -> 'match', '{}')) as m (key, value)
      where (conveyor.event_trigger_object(ev) #>> pg_catalog.string_to_array(m.key, '.'))
      is distinct from (m.value #>> '{}')
    )
    order by w.execution_id, ev.event_id
  ),

  runs as (
    update conveyor.step_runs as r
    set
      status = 'completed',
      finished_at = now(),
      next_step = m.next_step,
      output = coalesce(r.output, '{}') || jsonb_build_object('timed_out', false, 'event', m.event)
    from matched as m
    where r.step_run_id = m.step_run_id
    returning r.execution_id, r.output
  ),

  moved as (
    update conveyor.executions as e
    set
      status = 'running',
      wait_kind = null,
      resume_at = null,
      current_step = m.next_step,
      step_outputs = e.step_outputs || jsonb_build_object(m.current_step, jsonb_build_object('output', ru.output))
    from matched as m
    join runs as ru on ru.execution_id = m.execution_id
    where e.execution_id = m.execution_id
    returning e.execution_id
  )

  select array_agg(mv.execution_id order by mv.execution_id) into v_ids from moved as mv;

  if v_ids is not null then
    perform conveyor.advance_executions(v_ids, now());
  end if;
  return coalesce(cardinality(v_ids), 0);
end;
$$;

revoke all on function conveyor.resume_waiting_for_events(bigint[]) from public;
grant execute on function conveyor.resume_waiting_for_events(bigint[]) to conveyor_service;
