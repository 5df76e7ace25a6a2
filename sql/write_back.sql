-- The write-back of the runner's results: conveyor.write_back applies them
-- (conveyor.apply_action_results) and contains what the database refuses to one result.
--
-- Before, one result the database refused (a NUL in a webhook's answer: "unsupported
-- Unicode escape sequence") failed the runner's whole write-back, the runner let the
-- message come back, and the action was performed again every visibility timeout, forever.

-- Applies the runner's results (conveyor.write_back is its caller). p_results:
-- [{"msg_id", "step_run_id", "ok": true, "output"}
-- | {"msg_id", "step_run_id", "ok": false, "retryable", "retry_after_s", "error", "output"}
-- | {"msg_id", "step_run_id", "ok": false, "dead_letter": <reason>, "error"}].
-- Outcome 'applied', or 'ignored' for a late, duplicate or cancelled result (which changes
-- nothing), or 'dead_lettered'. Every message named is archived.
--
-- A dead letter (a message the runner did not perform, docs/queue.md) fails its step
-- without a retry, whatever the retry policy (its error policy applies), when the step
-- still waits for that message; the message is kept in conveyor.dead_letters either way.
-- So is the message of a result whose step run does not exist (reason step_run_gone).
--
-- Set-based on the hot path: the batch's executions and step runs are locked with one
-- statement each (executions first, then step runs, each in id order: the order every
-- writer uses), read with one join, and a successful result changes its execution in
-- memory only; the interpreter continues those executions and writes each one once. Only
-- failures (retries, error policies: the rare path) write row by row.
create or replace function conveyor.apply_action_results(p_results jsonb)
returns table (msg_id bigint, step_run_id bigint, outcome text)
language plpgsql
security definer
set search_path = ''
-- Every statement here (and in what it calls) reaches a batch's rows by their keys. A
-- runner's session keeps its statements' generic plans; planned while the tables were
-- small (a new install, the start of a burst), a join may be a hash join over a seq scan,
-- which stays cached while the tables grow (measured: 32 ms per write-back after a burst
-- of 5,000 workflows, instead of 1 ms). Index lookups are right at every size. So the
-- generic plans are used from the first call (for what it calls too): a custom plan per
-- call planned five statements again each time, ~0.25 ms per write-back of one result.
-- Nor a materialized scan of every step run joined by a filter: planned while step_runs
-- was small (72 rows), the results' lookup kept that plan as the table grew and a write-back
-- of 50 results cost 150 ms at 10,000 step runs (bench/fanout.py, join cost).
set enable_seqscan = off
set enable_hashjoin = off
set enable_mergejoin = off
set enable_material = off
set plan_cache_mode = force_generic_plan
set jit = off
as $$
#variable_conflict use_column
declare
  v_ids bigint[];
  v_item record;
  v_result jsonb;
  v_exec conveyor.executions;
  v_run conveyor.step_runs;
  v_step conveyor.workflow_steps;
  v_error jsonb;
  v_next text;
  v_new_id bigint;
  v_delay integer;
  v_moves boolean;  -- the result moves its execution on (not a retry, not the end)
  v_dead text;  -- the dead letter's reason, or null
  v_applied_execs bigint[] := '{}';  -- one applied result per execution and batch
  v_continued conveyor.executions[] := '{}';  -- their new state, to be interpreted on
  v_paused conveyor.executions[] := '{}';  -- new state, written as is (a paused execution takes no step)
  v_done_ids bigint[] := '{}';
  v_done_status text[] := '{}';
  v_done_output jsonb[] := '{}';
  v_done_error jsonb[] := '{}';
  v_done_next text[] := '{}';
  v_archived bigint[] := '{}';
  v_retry_ids bigint[] := '{}';
  v_retry_delays integer[] := '{}';
begin
  if jsonb_typeof(p_results) is distinct from 'array' then
    raise exception using
      errcode = '22023',
      message = 'write_back: results must be a JSON array',
      hint = '[{"msg_id": .., "step_run_id": .., "ok": true, "output": {...}}]';
  end if;

  v_ids := array(select (x.value ->> 'step_run_id')::bigint from jsonb_array_elements(p_results) as x (value));
  perform
  from conveyor.executions as e
  where e.execution_id = any(array(
    select r.execution_id from conveyor.step_runs as r where r.step_run_id = any(v_ids)
  ))
  order by e.execution_id
  for update;
  perform
  from conveyor.step_runs as r
  where r.step_run_id = any(v_ids)
  order by r.step_run_id
  for update;

  for v_item in
    select x.value as result, j.run, j.exec, j.step
    from jsonb_array_elements(p_results) with ordinality as x (value, n)
    -- lateral: three primary-key lookups per result, whatever the tables' sizes
    left join lateral (
      select r as run, e as exec, s as step
      from conveyor.step_runs as r
      join conveyor.executions as e on e.execution_id = r.execution_id
      left join conveyor.workflow_steps as s
        on s.workflow_id = e.workflow_id and s.version = e.version and s.step_id = r.step_id
      where r.step_run_id = (x.value ->> 'step_run_id')::bigint
    ) as j on true
    order by (x.value ->> 'step_run_id')::bigint, x.n
  loop
    v_result := v_item.result;
    v_run := v_item.run;
    v_exec := v_item.exec;
    v_step := v_item.step;
    msg_id := (v_result ->> 'msg_id')::bigint;
    step_run_id := (v_result ->> 'step_run_id')::bigint;
    outcome := 'ignored';
    v_dead := v_result ->> 'dead_letter';

    -- the step run and its execution still wait on exactly this message (and no earlier
    -- result of this batch was applied to the execution: a duplicate in the same batch)
    if v_run.status = 'queued'
      and (apply_action_results.msg_id is null or v_run.msg_id = apply_action_results.msg_id)
      and v_exec.status = 'waiting' and v_exec.wait_kind = 'action' and v_exec.current_step = v_run.step_id
      and not v_exec.execution_id = any(v_applied_execs)
    then
      outcome := 'applied';
      v_applied_execs := v_applied_execs || v_exec.execution_id;
      v_next := null;
      v_error := null;
      v_moves := true;

      if coalesce((v_result ->> 'ok')::boolean, false) then
        v_next := v_step.next_step;
        -- a sent email's tracking row (sql/email_tracking.sql), in this transaction
        if v_step.action_type = 'email.send' then
          perform conveyor.record_email_sent(
            v_run.tenant_id, v_run.execution_id, v_run.step_id, v_step.config ->> 'connection', v_run.input,
            v_result -> 'output'
          );
        end if;
      else
        v_error := case
          when jsonb_typeof(v_result -> 'error') = 'object' then v_result -> 'error'
          else jsonb_build_object('message', coalesce(v_result ->> 'error', 'action failed'))
        end || jsonb_build_object(
          'attempt', v_run.attempt, 'retryable', v_dead is null and coalesce((v_result ->> 'retryable')::boolean, false)
        ) || case when v_dead is null then '{}'::jsonb else jsonb_build_object('dead_letter', v_dead) end;

        if v_dead is null and coalesce((v_result ->> 'retryable')::boolean, false)
          and v_run.attempt < coalesce((v_step.retry_policy ->> 'attempts')::integer, 1)
        then
          -- the next attempt: a new queued step run with the same idempotency key; the
          -- execution keeps waiting on this step
          v_delay := conveyor.retry_delay_s(v_step.retry_policy, v_run.attempt, (v_result ->> 'retry_after_s')::numeric);
          update conveyor.step_runs as r
          set status = 'failed', output = v_result -> 'output', error = v_error, finished_at = now()
          where r.step_run_id = v_run.step_run_id;
          insert into conveyor.step_runs (
            execution_id, tenant_id, step_id, visit, attempt, status, input, idempotency_key
          )
          values (
            v_run.execution_id, v_run.tenant_id, v_run.step_id, v_run.visit, v_run.attempt + 1, 'queued', v_run.input,
            v_run.idempotency_key
          )
          returning step_runs.step_run_id into v_new_id;
          v_retry_ids := v_retry_ids || v_new_id;
          v_retry_delays := v_retry_delays || v_delay;
          insert into conveyor.execution_logs (tenant_id, execution_id, workflow_id, step_id, level, message, details)
          values (
            v_exec.tenant_id, v_exec.execution_id, v_exec.workflow_id, v_run.step_id, 'info',
            format(
              'step "%s" attempt %s failed (%s); attempt %s in %s s', v_run.step_id, v_run.attempt,
              coalesce(v_error ->> 'message', 'error'), v_run.attempt + 1, v_delay
            ),
            v_error || jsonb_build_object('retry_in_s', v_delay)
          );
          v_moves := false;
        elsif v_step.on_error in ('continue', 'goto') then
          v_next := case v_step.on_error when 'continue' then v_step.next_step else v_step.error_step end;
          insert into conveyor.execution_logs (
            tenant_id, execution_id, workflow_id, step_id, level, message, details
          )
          values (
            v_exec.tenant_id, v_exec.execution_id, v_exec.workflow_id, v_run.step_id, 'warning',
            format(
              'step "%s" failed (%s); on_error %s → %s', v_run.step_id, coalesce(v_error ->> 'message', 'error'),
              v_step.on_error, coalesce('"' || v_next || '"', 'end')
            ),
            v_error
          );
        else
          -- the error policy ends the execution, with the context an operator needs
          update conveyor.step_runs as r
          set status = 'failed', output = v_result -> 'output', error = v_error, finished_at = now()
          where r.step_run_id = v_run.step_run_id;
          perform conveyor.finish_execution(
            v_exec.execution_id, 'failed',
            jsonb_build_object(
              'step', v_run.step_id,
              'message', format(
                'step "%s" (%s) failed after %s attempt(s): %s', v_run.step_id, v_step.action_type, v_run.attempt,
                coalesce(v_error ->> 'message', 'error')
              ),
              'detail', v_error,
              'input', v_run.input,
              'output', v_result -> 'output'
            )
          );
          v_moves := false;
        end if;
      end if;

      if v_moves then
        -- the step is done (succeeded, or failed with on_error continue/goto): record it
        -- and move the execution on, in memory; both are written once below
        v_done_ids := v_done_ids || v_run.step_run_id;
        v_done_status := v_done_status || case when v_error is null then 'completed' else 'failed' end;
        v_done_output := v_done_output || (v_result -> 'output');
        v_done_error := v_done_error || v_error;
        v_done_next := v_done_next || v_next;
        v_exec.status := 'running';
        v_exec.wait_kind := null;
        v_exec.resume_at := null;
        v_exec.current_step := v_next;
        v_exec.step_outputs := v_exec.step_outputs || jsonb_build_object(
          v_run.step_id,
          case
            when v_error is null then jsonb_build_object('output', v_result -> 'output')
            else jsonb_build_object('output', v_result -> 'output', 'error', v_error)
          end
        );
        if v_exec.paused_at is null then
          v_continued := v_continued || v_exec;
        else
          v_paused := v_paused || v_exec;
        end if;
      end if;
    end if;

    if v_dead is not null and apply_action_results.msg_id is not null
      and not apply_action_results.msg_id = any(v_archived)
      and conveyor.keep_dead_letter(
        apply_action_results.msg_id, v_dead,
        coalesce(v_result -> 'error' ->> 'message', v_result ->> 'error', 'dead-lettered')
      )
    then
      outcome := 'dead_lettered';
    elsif v_run.step_run_id is null and apply_action_results.msg_id is not null
      and not apply_action_results.msg_id = any(v_archived)
      -- a message no step run exists for (read_actions checks a redelivery only): kept
      and conveyor.keep_dead_letter(
        apply_action_results.msg_id, 'step_run_gone',
        format('step run %s does not exist; the action was performed for a message nothing waits for',
          coalesce(apply_action_results.step_run_id::text, 'null'))
      )
    then
      outcome := 'dead_lettered';
    end if;
    if apply_action_results.msg_id is not null then
      v_archived := v_archived || apply_action_results.msg_id;
    end if;
    return next;
  end loop;

  if pg_catalog.cardinality(v_done_ids) > 0 then
    update conveyor.step_runs as r
    set status = d.status, output = d.output, error = d.error, next_step = d.next_step, finished_at = now()
    from unnest(v_done_ids, v_done_status, v_done_output, v_done_error, v_done_next)
      as d (step_run_id, status, output, error, next_step)
    where r.step_run_id = d.step_run_id;
  end if;
  if pg_catalog.cardinality(v_paused) > 0 then
    update conveyor.executions as e
    set
      status = x.status, wait_kind = x.wait_kind, resume_at = x.resume_at, current_step = x.current_step,
      step_outputs = x.step_outputs
    from unnest(v_paused) as x
    where e.execution_id = x.execution_id;
  end if;
  -- The continued executions run on to their next stopping point together (each written
  -- once, in the state it reached), and the actions they reached are sent in one batch.
  if pg_catalog.cardinality(v_continued) > 0 then
    perform conveyor.interpret_executions(v_continued, now(), false);
  end if;
  if pg_catalog.cardinality(v_archived) > 0 then
    perform conveyor.archive_actions(v_archived);
  end if;
  -- the next attempts, one send per distinct delay
  perform conveyor.send_actions(pg_catalog.array_agg(r.step_run_id), r.delay_s)
  from unnest(v_retry_ids, v_retry_delays) as r (step_run_id, delay_s)
  group by r.delay_s;
end;
$$;

-- Applies the runner's results (conveyor.apply_action_results) in a subtransaction.
-- Containment, as conveyor.dispatch_contained and interpret_executions do it: when that
-- fails on something in the results' data (any error but the transient ones,
-- conveyor.error_is_transient, which are raised: the runner writes the batch again), the
-- results are halved and each half applied again, down to the result that fails alone
-- (conveyor.refuse_action_result). The others are applied; one refused result in a batch
-- of n costs about 2 log2(n) retries.
create or replace function conveyor.write_back(p_results jsonb)
returns table (msg_id bigint, step_run_id bigint, outcome text)
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_n integer;
  v_state text;
  v_msg text;
begin
  begin
    return query select a.msg_id, a.step_run_id, a.outcome from conveyor.apply_action_results(p_results) as a;
    return;
  exception when others then
    get stacked diagnostics v_state = returned_sqlstate, v_msg = message_text;
    -- transient, or not a batch of results at all (the runner's own bug): raised as it is
    if conveyor.error_is_transient(v_state) or jsonb_typeof(p_results) is distinct from 'array' then
      raise;
    end if;
  end;
  v_n := jsonb_array_length(p_results);
  if v_n = 1 then
    return query select r.msg_id, r.step_run_id, r.outcome
    from conveyor.refuse_action_result(p_results -> 0, v_state, v_msg) as r;
  elsif v_n > 1 then
    return query select h.msg_id, h.step_run_id, h.outcome
    from conveyor.write_back((
      select jsonb_agg(x.value order by x.n) from jsonb_array_elements(p_results) with ordinality as x (value, n)
      where x.n <= v_n / 2
    )) as h;
    return query select h.msg_id, h.step_run_id, h.outcome
    from conveyor.write_back((
      select jsonb_agg(x.value order by x.n) from jsonb_array_elements(p_results) with ordinality as x (value, n)
      where x.n > v_n / 2
    )) as h;
  end if;
end;
$$;

-- A result the database refused (p_state, p_error): its step fails permanently with the
-- reason, without a retry (its error policy applies), and the message is dead-lettered
-- (reason result_refused) and archived. Should even that be refused, the message is still
-- kept and archived, and its step is left as it was.
create or replace function conveyor.refuse_action_result(p_result jsonb, p_state text, p_error text)
returns table (msg_id bigint, step_run_id bigint, outcome text)
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_msg_id bigint := conveyor.jsonb_bigint(p_result -> 'msg_id');
  v_run_id bigint := conveyor.jsonb_bigint(p_result -> 'step_run_id');
  v_error text := format('the database refused the action''s result (SQLSTATE %s: %s)', p_state, p_error);
  v_state text;
  v_msg text;
begin
  if v_run_id is null then  -- the step run the message itself names
    select conveyor.jsonb_bigint(q.message -> 'step_run_id') into v_run_id
    from pgmq.q_conveyor_actions as q where q.msg_id = v_msg_id;
  end if;
  begin
    return query select a.msg_id, a.step_run_id, a.outcome
    from conveyor.apply_action_results(jsonb_build_array(jsonb_build_object(
      'msg_id', v_msg_id, 'step_run_id', v_run_id, 'ok', false, 'dead_letter', 'result_refused',
      'error', jsonb_build_object('message', v_error, 'type', 'result_refused', 'sqlstate', p_state)
    ))) as a;
    return;
  exception when others then
    get stacked diagnostics v_state = returned_sqlstate, v_msg = message_text;
    if conveyor.error_is_transient(v_state) then
      raise;
    end if;
  end;
  if v_msg_id is not null then
    perform conveyor.keep_dead_letter(
      v_msg_id, 'result_refused', format('%s; failing its step was refused too (SQLSTATE %s: %s)', v_error, v_state, v_msg)
    );
    perform conveyor.archive_actions(array[v_msg_id]);
  end if;
  msg_id := v_msg_id;
  step_run_id := v_run_id;
  outcome := 'dead_lettered';
  return next;
end;
$$;

revoke all on function conveyor.apply_action_results(jsonb) from public;
revoke all on function conveyor.refuse_action_result(jsonb, text, text) from public;
revoke all on function conveyor.write_back(jsonb) from public;
grant execute on function conveyor.write_back(jsonb) to conveyor_service;
