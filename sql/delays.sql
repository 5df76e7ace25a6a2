-- Resuming executions whose delay is over or whose wait for an event timed out.
-- Driven by the runner's tick (and pg_cron every minute as a safety net); the clock is a
-- parameter so tests move time instead of sleeping.

-- When the next execution waiting on time (a delay, an event wait's timeout, an approval's
-- due time) is due;
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
  return least(
    (
      select e.resume_at
      from conveyor.executions as e
      where e.status = 'waiting' and e.wait_kind in ('delay', 'event', 'approval') and e.paused_at is null
        and e.resume_at is not null
      order by e.resume_at, e.execution_id
      limit 1
    ),
    -- a wait not confirmed yet is due at once (conveyor.confirm_waits, sql/waits.sql)
    (select min(w.registered_at) from conveyor.waits as w where not w.confirmed),
    -- a join's timeout, or a decided join not applied yet (sql/fanout_join.sql)
    conveyor.fanout_next_due_at(),
    -- now, for a decided approval its execution's lock held back (sql/approval_outcomes.sql;
    -- inline: a function call here costs every tick)
    (
      select now()
      from conveyor.approval_requests as r
      join conveyor.executions as e on e.execution_id = r.execution_id
      where r.state = 'decided' and e.paused_at is null
      limit 1
    ),
    -- an execution admitted to a concurrency slot, or a debounce period over (sql/flow_control.sql)
    conveyor.flow_next_due_at()
  );
end;
$$;

revoke all on function conveyor.next_due_at() from public;
grant execute on function conveyor.next_due_at() to conveyor_service;

-- Claims up to p_limit due executions (oldest resume_at first, skip locked), moves each
-- past its delay (next_step), and runs it on; waits for events are confirmed and timed
-- out by sql/waits.sql (conveyor.confirm_waits, conveyor.resume_due_waits).
-- Returns how many executions were resumed.
create or replace function conveyor.resume_due(p_now timestamptz default now(), p_limit integer default 1000)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_ids bigint[];
  v_waits integer;
begin
  -- waits registered since the last call look back once more (sql/waits.sql)
  v_waits := conveyor.confirm_waits(p_limit);
  -- Nothing due is the common case (the runner ticks often): answer it with one probe of
  -- executions_due_scan_idx. The statement below has parameters, and once many
  -- executions wait the planner prefers a custom plan for it, i.e. plans it on every call;
  -- that cost grew with the number of waiting executions even when nothing was due.
  if not coalesce(conveyor.next_due_at() <= p_now, false) then
    return v_waits;
  end if;
  v_waits := v_waits + conveyor.resume_due_waits(p_now, p_limit);
  v_waits := v_waits + conveyor.fanout_due(p_now, p_limit);
  v_waits := v_waits + conveyor.flow_due(p_now, p_limit);
  -- approvals due (escalated or expired) or decided while their execution was locked
  v_waits := v_waits + conveyor.approval_due(p_now, p_limit);

  with due as (
    select e.execution_id, e.workflow_id, e.version, e.current_step
    from conveyor.executions as e
    where e.status = 'waiting' and e.wait_kind = 'delay' and e.resume_at <= p_now
      and e.paused_at is null
    order by e.resume_at, e.execution_id
    limit p_limit
    for update skip locked
  ),

  target as (
    select d.execution_id, d.current_step, s.next_step
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
      output = coalesce(r.output, '{}') || jsonb_build_object('resumed_at', p_now)
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
  return v_waits + coalesce(cardinality(v_ids), 0);
end;
$$;

revoke all on function conveyor.resume_due(timestamptz, integer) from public;
grant execute on function conveyor.resume_due(timestamptz, integer) to conveyor_service;
