-- Handing executions to the interpreter (sql/interpreter.sql, conveyor.interpret_batch):
-- the entry points (advance_executions, advance_execution, run_executions) and the
-- containment of a batch that fails on one execution's data (interpret_executions,
-- fail_uninterpretable).

-- Runs executions (the caller holds their row locks) from current_step until each waits
-- or ends. p_now is the interpreter's clock for scheduling decisions (delays, {{now}}), so
-- resume_due(p_now) is testable without sleeping. Executions not pending or running are
-- left alone. An action it reaches becomes a queued step_run and its message in the
-- queue, written together (interpret_executions).
--
-- The work is sequential per execution (each walks its own graph), but the writes are
-- set-based: step_runs, the executions' new state and the stats of completed executions
-- are collected in arrays and written with one statement each at the end. Steps only
-- read the database (the graph, earlier visits of resumed executions), so deferring the
-- writes changes nothing they see. Steps with side effects (emit, data) still write
-- immediately inside their own subtransaction.
create or replace function conveyor.advance_executions(p_execution_ids bigint[], p_now timestamptz default now())
returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_execs conveyor.executions[];
begin
  select array_agg(e order by e.execution_id) into v_execs
  from conveyor.executions as e
  where e.execution_id = any(p_execution_ids) and e.status in ('pending', 'running')
    and e.paused_at is null;
  perform conveyor.interpret_executions(v_execs, p_now, false);
end;
$$;

-- The interpreter proper, over execution rows held in memory: p_execs are either rows
-- read from conveyor.executions (p_new false: their new state is written with one
-- update) or executions that do not exist yet (p_new true, from dispatch: each is
-- inserted once, in its state after its first steps, instead of inserted and then
-- updated — one write per execution on the hot path). Log lines about the executions
-- are written after the executions themselves, so they may refer to new ones.
--
-- An action reached is queued with its message in one batch: the messages go into the
-- queue first and each action's step run is inserted with its msg_id, so the row is not
-- written a second time to record it (send_actions does that for retries). Step run ids
-- are taken from their sequence as the runs happen, so they follow the order of the steps.
drop function if exists conveyor.interpret_executions(conveyor.executions[], timestamptz, boolean);
-- Runs a batch of executions (conveyor.interpret_batch). Containment: a step's own errors
-- are handled by the step (its on_error); when anything else fails on an execution's data
-- (an error that is not transient, conveyor.error_is_transient), the batch is halved and
-- each half run again, down to the execution that fails alone: it ends failed with its
-- error, what it did in this call rolled back, while the rest of the batch goes on (one
-- bad execution in a batch of n costs about 2 log2(n) retries, not n). Nothing is performed
-- twice: a step's effects are written only with the state that records them.
create or replace function conveyor.interpret_executions(
  p_execs conveyor.executions[],
  p_now timestamptz,
  p_new boolean
)
returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_n integer := coalesce(pg_catalog.cardinality(p_execs), 0);
  v_state text;
  v_msg text;
  v_detail text;
begin
  begin
    perform conveyor.interpret_batch(p_execs, p_now, p_new);
    return;
  exception when others then
    get stacked diagnostics v_state = returned_sqlstate, v_msg = message_text, v_detail = pg_exception_detail;
    if conveyor.error_is_transient(v_state) then
      raise;
    end if;
  end;
  if v_n = 1 then
    perform conveyor.fail_uninterpretable(p_execs[1], p_new, jsonb_build_object(
      'step', p_execs[1].current_step,
      'message', format('execution %s could not be run: %s', p_execs[1].execution_id, v_msg),
      'detail', nullif(v_detail, ''),
      'sqlstate', v_state
    ));
  elsif v_n > 1 then
    perform conveyor.interpret_executions(p_execs[1:v_n / 2], p_now, p_new);
    perform conveyor.interpret_executions(p_execs[v_n / 2 + 1:v_n], p_now, p_new);
  end if;
end;
$$;

-- Ends an execution that could not be run (conveyor.interpret_executions) failed with
-- p_error. A new execution is written first, as it was when it was started.
create or replace function conveyor.fail_uninterpretable(
  p_exec conveyor.executions,
  p_new boolean,
  p_error jsonb
)
returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_exec conveyor.executions := p_exec;
begin
  if p_new then
    v_exec.status := 'pending';
    v_exec.wait_kind := null;
    v_exec.resume_at := null;
    insert into conveyor.executions overriding system value
    select (v_exec).*;
  end if;
  perform conveyor.finish_execution(p_exec.execution_id, 'failed', p_error);
end;
$$;

-- Runs one execution (the caller holds its row lock) from current_step until it waits or
-- ends (see advance_executions). Returns the execution's status afterwards.
create or replace function conveyor.advance_execution(p_execution_id bigint, p_now timestamptz default now())
returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_status text;
begin
  perform conveyor.advance_executions(array[p_execution_id], p_now);
  select e.status into v_status from conveyor.executions as e where e.execution_id = p_execution_id;
  return v_status;
end;
$$;

-- Runs pending (or interrupted running) executions until each waits or ends.
create or replace function conveyor.run_executions(p_execution_ids bigint[]) returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_ids bigint[];
begin
  -- Each execution walks its own graph to its own stopping point (action, delay, end);
  -- advance_executions does that for the batch with set-based writes. The rows are locked
  -- skip-locked, so concurrent callers take disjoint executions.
  select coalesce(array_agg(l.execution_id order by l.execution_id), '{}') into v_ids
  from (
    select e.execution_id
    from conveyor.executions as e
    where e.execution_id = any(p_execution_ids) and e.status in ('pending', 'running')
      and e.paused_at is null
    order by e.execution_id
    for update skip locked
  ) as l;
  if cardinality(v_ids) > 0 then
    perform conveyor.advance_executions(v_ids, now());
  end if;
  return cardinality(v_ids);
end;
$$;

revoke all on function conveyor.advance_execution(bigint, timestamptz) from public;
revoke all on function conveyor.advance_executions(bigint[], timestamptz) from public;
revoke all on function conveyor.interpret_executions(conveyor.executions[], timestamptz, boolean) from public;
revoke all on function conveyor.fail_uninterpretable(conveyor.executions, boolean, jsonb) from public;
revoke all on function conveyor.run_executions(bigint[]) from public;
grant execute on function conveyor.advance_execution(bigint, timestamptz) to conveyor_service;
grant execute on function conveyor.advance_executions(bigint[], timestamptz) to conveyor_service;
grant execute on function conveyor.interpret_executions(conveyor.executions[], timestamptz, boolean)
to conveyor_service;
grant execute on function conveyor.run_executions(bigint[]) to conveyor_service;
