-- Fan-out joins (sql/fanout.sql starts the children): counting finished children, deciding
-- and applying the join, timeouts, and cancel / pause / resume reaching the children.
--
-- Counters, not walks: a finishing child decrements its fan-out's `open` and counts itself
-- succeeded or failed, in the transaction that finishes it (conveyor.fanout_count_done, one
-- statement per batch of children); two children finishing at once, from two runners,
-- queue on the fan-out's row lock, and the second re-reads the row the first committed, so
-- no finish is lost or counted twice. The join's outcome follows from the counters
-- (conveyor.fanout_outcome); a for_each with room starts its next items in the same
-- transaction.
--
-- Lock order: a child, then its fan-out, then the parent, taken with skip locked: a
-- parent held by someone else (a cancel, a pause, the tick) is left to them, the fan-out
-- stays 'ready' and the tick applies it (conveyor.fanout_due). A parent's cancel and a
-- join that no longer needs the other children cancel them with skip locked as well; a
-- child held at that instant finds its fan-out closed the next time it is interpreted and
-- ends cancelled there (conveyor.interpret_batch).
--
-- Follow-ups run in a loop, not by recursion: running a child may finish it, which may
-- decide a join, which runs the parent, which may finish it in turn. The outermost
-- conveyor.fanout_follow_up of a transaction drains that work; inner calls leave theirs
-- to it (transaction-local settings conveyor.fanout_run / conveyor.fanout_done, restored
-- with a rolled-back subtransaction like everything else it did).

drop function if exists conveyor.fanout_is_open(bigint);

-- Runs the children just started (p_run) and counts the children just finished (p_done),
-- then whatever follows from that, until nothing does.
create or replace function conveyor.fanout_follow_up(p_run bigint[], p_done bigint[])
returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_run bigint[] := coalesce(p_run, '{}');
  v_done bigint[] := coalesce(p_done, '{}');
  v_more bigint[];
begin
  if pg_catalog.cardinality(v_run) = 0 and pg_catalog.cardinality(v_done) = 0 then
    return;
  end if;
  if coalesce(pg_catalog.current_setting('conveyor.fanout_draining', true), '') = 'on' then
    -- an enclosing call drains: leave the work to it
    perform pg_catalog.set_config('conveyor.fanout_run', pg_catalog.concat_ws(',',
      nullif(pg_catalog.current_setting('conveyor.fanout_run', true), ''), nullif(pg_catalog.array_to_string(v_run, ','), '')
    ), true);
    perform pg_catalog.set_config('conveyor.fanout_done', pg_catalog.concat_ws(',',
      nullif(pg_catalog.current_setting('conveyor.fanout_done', true), ''), nullif(pg_catalog.array_to_string(v_done, ','), '')
    ), true);
    return;
  end if;

  perform pg_catalog.set_config('conveyor.fanout_draining', 'on', true);
  loop
    if pg_catalog.cardinality(v_done) > 0 then
      -- counting may start a for_each's next items, and applies the joins it decides
      v_more := conveyor.fanout_count_done(v_done);
      v_run := v_run || v_more;
    end if;
    if pg_catalog.cardinality(v_run) > 0 then
      perform conveyor.advance_executions(v_run, pg_catalog.now());
    end if;
    v_run := pg_catalog.string_to_array(nullif(pg_catalog.current_setting('conveyor.fanout_run', true), ''), ',')::bigint[];
    v_done := pg_catalog.string_to_array(nullif(pg_catalog.current_setting('conveyor.fanout_done', true), ''), ',')::bigint[];
    perform pg_catalog.set_config('conveyor.fanout_run', '', true);
    perform pg_catalog.set_config('conveyor.fanout_done', '', true);
    v_run := coalesce(v_run, '{}');
    v_done := coalesce(v_done, '{}');
    exit when pg_catalog.cardinality(v_run) = 0 and pg_catalog.cardinality(v_done) = 0;
  end loop;
  perform pg_catalog.set_config('conveyor.fanout_draining', '', true);
end;
$$;

-- Counts finished children (p_ids, final now; those of closed fan-outs count nothing) in
-- their fan-outs, decides the joins this reaches and applies them, and starts the next
-- items of for_each fan-outs that have room. Returns the ids of the items started (to run).
create or replace function conveyor.fanout_count_done(p_ids bigint[])
returns bigint[]
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_fanout conveyor.fanouts;
  v_outcome text;
  v_run bigint[] := '{}';
  v_next bigint[];
  v_next_turn integer;
begin
  for v_fanout in
    with done as (
      select
        x.fanout_id,
        count(*) filter (where x.status = 'completed') as ok,
        count(*) filter (where x.status <> 'completed') as bad
      from conveyor.executions as x
      where x.execution_id = any(p_ids) and x.fanout_id is not null
        and x.status in ('completed', 'failed', 'cancelled', 'timed_out')
      group by x.fanout_id
    )

    update conveyor.fanouts as f
    set open = greatest(f.open - (d.ok + d.bad)::integer, 0), succeeded = f.succeeded + d.ok::integer,
      failed = f.failed + d.bad::integer
    from done as d
    where f.fanout_id = d.fanout_id and f.state = 'open'
    returning f.*
  loop
    v_outcome := conveyor.fanout_outcome(v_fanout);
    if v_outcome is not null then
      update conveyor.fanouts as f set state = 'ready', outcome = v_outcome where f.fanout_id = v_fanout.fanout_id;
      perform conveyor.fanout_apply(v_fanout.fanout_id);
    elsif v_fanout.started < v_fanout.total
      and (v_fanout.concurrency is null or v_fanout.open < v_fanout.concurrency) then
      -- the next items in order, as many as there is room for
      with turn as (
        select c.execution_id
        from conveyor.executions as c
        where c.fanout_id = v_fanout.fanout_id and c.child_index >= v_fanout.next_turn
          and c.status = 'waiting' and c.wait_kind = 'turn'
        order by c.child_index
        limit coalesce(v_fanout.concurrency, v_fanout.total) - v_fanout.open
        for update
      ),

      started as (
        update conveyor.executions as c
        set status = 'pending', wait_kind = null
        from turn as t
        where c.execution_id = t.execution_id
        returning c.execution_id, c.child_index
      )

      select coalesce(array_agg(t.execution_id order by t.execution_id), '{}'), max(t.child_index) + 1
      into v_next, v_next_turn
      from started as t;
      update conveyor.fanouts as f
      set started = f.started + pg_catalog.cardinality(v_next), open = f.open + pg_catalog.cardinality(v_next),
        next_turn = coalesce(v_next_turn, f.next_turn)
      where f.fanout_id = v_fanout.fanout_id;
      v_run := v_run || v_next;
    end if;
  end loop;
  return v_run;
end;
$$;

-- Applies a decided join ('ready') to its parent: the children it no longer needs are
-- cancelled, the step's output gathered (conveyor.fanout_result), its step run finished,
-- and the parent moved on (or failed, by the step's on_error) and run. Leaves it 'ready'
-- and returns false when the parent is locked by another transaction, or paused (the
-- tick, or the resume, applies it then).
create or replace function conveyor.fanout_apply(p_fanout_id bigint)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_fanout conveyor.fanouts;
  v_parent conveyor.executions;
  v_step conveyor.workflow_steps;
  v_output jsonb;
  v_error jsonb;
  v_msg text;
  v_detail text;
  v_next text;
begin
  select * into v_fanout from conveyor.fanouts as f where f.fanout_id = p_fanout_id for update;
  if v_fanout.state is distinct from 'ready' then
    return false;
  end if;
  select * into v_parent from conveyor.executions as e where e.execution_id = v_fanout.execution_id
  for update skip locked;
  if not found then
    return false;
  end if;
  if v_parent.status <> 'waiting' or v_parent.wait_kind <> 'children' or v_parent.current_step <> v_fanout.step_id then
    -- the parent went on without it (cancelled, timed out)
    update conveyor.fanouts as f set state = 'joined' where f.fanout_id = p_fanout_id;
    return false;
  end if;
  if v_parent.paused_at is not null then
    return false;
  end if;

  update conveyor.fanouts as f set state = 'joined' where f.fanout_id = p_fanout_id;
  perform conveyor.fanout_cancel_children(p_fanout_id, 'cancelled',
    jsonb_build_object('message', format('not needed: the join of step "%s" of execution %s was decided (%s)',
      v_fanout.step_id, v_fanout.execution_id, v_fanout.outcome)));

  select * into v_step from conveyor.workflow_steps as s
  where s.workflow_id = v_parent.workflow_id and s.version = v_parent.version and s.step_id = v_fanout.step_id;
  begin
    v_output := conveyor.fanout_result(v_fanout, format('step "%s"', v_fanout.step_id));
  exception when sqlstate 'CVFAN' then
    get stacked diagnostics v_msg = message_text, v_detail = pg_exception_detail;
    v_output := v_detail::jsonb;
    v_error := jsonb_build_object('step', v_fanout.step_id, 'message', v_msg, 'outcome', v_fanout.outcome);
  end;

  v_next := case
    when v_error is null or v_step.on_error = 'continue' then v_step.next_step
    when v_step.on_error = 'goto' then v_step.error_step
  end;
  update conveyor.step_runs as r
  set status = case when v_error is null then 'completed' else 'failed' end, output = v_output, error = v_error,
    next_step = case when v_error is null or v_step.on_error in ('continue', 'goto') then v_next end,
    finished_at = pg_catalog.now()
  where r.execution_id = v_parent.execution_id and r.step_id = v_fanout.step_id and r.visit = v_fanout.visit
    and r.status = 'running';

  if v_error is not null and v_step.on_error not in ('continue', 'goto') then
    update conveyor.executions as e
    set step_outputs = e.step_outputs || jsonb_build_object(v_fanout.step_id,
      jsonb_build_object('output', v_output, 'error', v_error))
    where e.execution_id = v_parent.execution_id;
    perform conveyor.finish_execution(v_parent.execution_id, 'failed', v_error);
    return true;
  end if;
  if v_error is not null then
    insert into conveyor.execution_logs (tenant_id, execution_id, workflow_id, step_id, level, message, details)
    values (v_parent.tenant_id, v_parent.execution_id, v_parent.workflow_id, v_fanout.step_id, 'warning',
      format('step "%s" failed (%s); on_error %s → %s', v_fanout.step_id, v_error ->> 'message', v_step.on_error,
        coalesce('"' || v_next || '"', 'end')), v_error);
  end if;
  v_parent.step_outputs := v_parent.step_outputs || jsonb_build_object(v_fanout.step_id, case
    when v_error is null then jsonb_build_object('output', v_output)
    else jsonb_build_object('output', v_output, 'error', v_error)
  end);
  v_parent.status := 'running';
  v_parent.wait_kind := null;
  v_parent.resume_at := null;
  v_parent.current_step := v_next;
  perform conveyor.interpret_executions(array[v_parent], pg_catalog.now(), false);
  return true;
end;
$$;

-- Ends the children of a fan-out that are not final (p_status 'cancelled' or 'timed_out',
-- conveyor.abort_execution: their own children too). Children locked by another
-- transaction are skipped: they end when next interpreted (conveyor.interpret_batch finds
-- their fan-out no longer open).
create or replace function conveyor.fanout_cancel_children(p_fanout_id bigint, p_status text, p_error jsonb)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_id bigint;
  v_n integer := 0;
begin
  for v_id in
    select c.execution_id
    from conveyor.executions as c
    where c.fanout_id = p_fanout_id and c.status not in ('completed', 'failed', 'cancelled', 'timed_out')
    order by c.execution_id
    for update skip locked
  loop
    if conveyor.abort_execution(v_id, p_status, p_error) then
      v_n := v_n + 1;
    end if;
  end loop;
  return v_n;
end;
$$;

-- An execution ended from outside (conveyor.abort_execution): its open fan-outs are
-- closed and their children ended with it.
create or replace function conveyor.fanout_abort_children(p_execution_id bigint, p_status text, p_error jsonb)
returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_fanout_id bigint;
begin
  for v_fanout_id in
    update conveyor.fanouts as f
    set state = 'joined', outcome = coalesce(f.outcome, 'cancelled')
    where f.execution_id = p_execution_id and f.state in ('open', 'ready')
    returning f.fanout_id
  loop
    perform conveyor.fanout_cancel_children(v_fanout_id, p_status, jsonb_build_object(
      'message', format('execution %s, whose step "%s" started this one, was %s', p_execution_id,
        p_error ->> 'step', p_status)));
  end loop;
end;
$$;

-- Pausing (p_pause) or resuming the children of an execution, and theirs (a parent paused
-- or resumed takes its children with it). Resumed children that can run are run.
create or replace function conveyor.fanout_pause_children(p_execution_id bigint, p_pause boolean)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_ids bigint[];
  v_tree bigint[];
  v_id bigint;
  v_n integer := 0;
begin
  with recursive tree (execution_id) as (
    select c.execution_id from conveyor.executions as c where c.parent_execution_id = p_execution_id
    union all
    select c.execution_id from tree as t join conveyor.executions as c on c.parent_execution_id = t.execution_id
  ),

  changed as (
    update conveyor.executions as e
    set paused_at = case when p_pause then pg_catalog.now() end
    from tree as t
    where e.execution_id = t.execution_id and e.status not in ('completed', 'failed', 'cancelled', 'timed_out')
      and (e.paused_at is null) = p_pause
    returning e.execution_id, e.status
  )

  select
    array_agg(c.execution_id order by c.execution_id) filter (where c.status in ('pending', 'running')),
    coalesce(array_agg(c.execution_id), '{}'),
    count(*)
  into v_ids, v_tree, v_n
  from changed as c;
  if not p_pause then
    if v_ids is not null then
      perform conveyor.run_executions(v_ids);
    end if;
    -- joins decided while they were paused
    for v_id in
      select f.fanout_id
      from conveyor.fanouts as f
      where f.state = 'ready' and (f.execution_id = p_execution_id or f.execution_id = any(v_tree))
      order by f.fanout_id
    loop
      perform conveyor.fanout_apply(v_id);
    end loop;
  end if;
  return v_n;
end;
$$;

-- The tick's part (conveyor.resume_due): joins whose timeout is due end with outcome
-- 'timed_out' (the children still running are cancelled, the step fails by its
-- on_error), and joins decided while their parent was locked are applied. Returns how many
-- parents moved on.
create or replace function conveyor.fanout_due(p_now timestamptz, p_limit integer)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_parent record;
  v_id bigint;
  v_n integer := 0;
begin
  for v_parent in
    select e.execution_id, e.current_step
    from conveyor.executions as e
    where e.status = 'waiting' and e.wait_kind = 'children' and e.resume_at <= p_now and e.resume_at is not null
      and e.paused_at is null
    order by e.resume_at, e.execution_id
    limit p_limit
    for update skip locked
  loop
    update conveyor.fanouts as f set state = 'ready', outcome = 'timed_out'
    where f.execution_id = v_parent.execution_id and f.step_id = v_parent.current_step and f.state = 'open';
  end loop;
  for v_id in
    select f.fanout_id
    from conveyor.fanouts as f
    join conveyor.executions as e on e.execution_id = f.execution_id
    where f.state = 'ready' and e.paused_at is null
    order by f.fanout_id
    limit p_limit
  loop
    if conveyor.fanout_apply(v_id) then
      v_n := v_n + 1;
    end if;
  end loop;
  return v_n;
end;
$$;

-- When the tick has fan-out work: the earliest join timeout, or now for a join decided
-- but not applied (conveyor.next_due_at).
create or replace function conveyor.fanout_next_due_at()
returns timestamptz
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  return least(
    (
      select e.resume_at
      from conveyor.executions as e
      where e.status = 'waiting' and e.wait_kind = 'children' and e.paused_at is null and e.resume_at is not null
      order by e.resume_at, e.execution_id
      limit 1
    ),
    -- (a paused parent's join waits for its resume, which applies it)
    (
      select pg_catalog.now()
      from conveyor.fanouts as f
      join conveyor.executions as e on e.execution_id = f.execution_id
      where f.state = 'ready' and e.paused_at is null
      limit 1
    )
  );
end;
$$;

revoke all on function conveyor.fanout_follow_up(bigint[], bigint[]) from public;
revoke all on function conveyor.fanout_count_done(bigint[]) from public;
revoke all on function conveyor.fanout_apply(bigint) from public;
revoke all on function conveyor.fanout_cancel_children(bigint, text, jsonb) from public;
revoke all on function conveyor.fanout_abort_children(bigint, text, jsonb) from public;
revoke all on function conveyor.fanout_pause_children(bigint, boolean) from public;
revoke all on function conveyor.fanout_due(timestamptz, integer) from public;
revoke all on function conveyor.fanout_next_due_at() from public;
