-- The hand-off to the runner and the write-back of its results.
--
-- An external action is a step_run in status 'queued' plus one message in the pgmq queue
-- conveyor_actions carrying the fully rendered input. The runner performs it and calls
-- conveyor.write_back, which (guards first) applies the result exactly once, decides
-- retries and error policies in SQL, archives the message and continues the execution,
-- all in the runner's one transaction.

-- Sends the messages of queued action step_runs in one pgmq.send_batch (visible after
-- p_delay_s seconds) and records each message's msg_id on its step_run. Returns how many
-- messages were sent.
create or replace function conveyor.send_actions(p_step_run_ids bigint[], p_delay_s integer default 0)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_messages jsonb[];
  v_msg_ids bigint[];
begin
  if coalesce(pg_catalog.cardinality(p_step_run_ids), 0) = 0 then
    return 0;  -- most write-backs reach no new action
  end if;
  select array_agg(m.message order by m.step_run_id) into v_messages
  from (
    select
      r.step_run_id,
      jsonb_build_object(
        'step_run_id', r.step_run_id,
        'execution_id', r.execution_id,
        'tenant_id', r.tenant_id,
        'workflow_id', e.workflow_id,
        'step_id', r.step_id,
        'action', s.action_type,
        'connection', conveyor.step_spec(s.kind, s.config) ->> 'connection',
        'input', r.input,
        'idempotency_key', r.idempotency_key,
        'attempt', r.attempt,
        'timeout_s', ceil(extract(epoch from s.timeout))::integer
      ) as message
    -- driven by the ids (unnest), so that plpgsql's cached generic plan starts from the
    -- step_runs primary key whatever the tables' sizes, not from a scan of executions
    from unnest(p_step_run_ids) as ids (step_run_id)
    join conveyor.step_runs as r on r.step_run_id = ids.step_run_id
    join conveyor.executions as e on e.execution_id = r.execution_id
    join conveyor.workflow_steps as s
      on s.workflow_id = e.workflow_id and s.version = e.version and s.step_id = r.step_id
    where r.status = 'queued' and s.kind = 'action'
  ) as m;
  if v_messages is null then
    return 0;
  end if;

  select array_agg(b.msg_id) into v_msg_ids
  from pgmq.send_batch('conveyor_actions', v_messages, greatest(coalesce(p_delay_s, 0), 0)) as b (msg_id);
  -- wake the runners (one notification per transaction; a delayed message is found by
  -- their poll once it becomes visible)
  if coalesce(p_delay_s, 0) <= 0 then
    perform pg_catalog.pg_notify('conveyor_actions', 'queued');
  end if;
  -- Each message names its step_run: map the new msg_ids back through the queue table.
  update conveyor.step_runs as r
  set msg_id = q.msg_id
  from pgmq.q_conveyor_actions as q
  where q.msg_id = any(v_msg_ids) and r.step_run_id = (q.message ->> 'step_run_id')::bigint;
  return cardinality(v_msg_ids);
end;
$$;

-- Sends the actions the interpreter queued (step_runs 'queued' without a message yet) for
-- these executions, in one batch. Every caller of advance_execution ends with it.
create or replace function conveyor.send_new_actions(p_execution_ids bigint[])
returns integer
language plpgsql
security definer
set search_path = ''
as $$
begin
  return conveyor.send_actions(array(
    select r.step_run_id
    from conveyor.step_runs as r
    where r.execution_id = any(p_execution_ids) and r.status = 'queued' and r.msg_id is null
  ));
end;
$$;

-- Sends (or sends again) one queued step_run's message after p_delay_s seconds.
create or replace function conveyor.enqueue_action(p_step_run_id bigint, p_delay_s integer default 0)
returns bigint
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_msg_id bigint;
begin
  if conveyor.send_actions(array[p_step_run_id], p_delay_s) = 0 then
    raise exception using
      errcode = '22023',
      message = format('step run %s is not a queued action', p_step_run_id);
  end if;
  select r.msg_id into v_msg_id from conveyor.step_runs as r where r.step_run_id = p_step_run_id;
  return v_msg_id;
end;
$$;

-- Seconds to wait before attempt p_attempt + 1 after attempt p_attempt failed:
-- exponential (initial * 2^(attempt-1)) or fixed (initial), ±20% jitter when the policy
-- says jitter, capped at max; a larger Retry-After from the receiver wins.
create or replace function conveyor.retry_delay_s(
  p_policy jsonb,
  p_attempt integer,
  p_retry_after_s numeric default null
) returns integer
language plpgsql
volatile
set search_path = ''
as $$
declare
  v_initial numeric := extract(epoch from conveyor.parse_duration(coalesce(p_policy ->> 'initial', '30s')));
  v_max numeric := extract(epoch from conveyor.parse_duration(coalesce(p_policy ->> 'max', '1h')));
  v_delay numeric;
begin
  v_delay := case
    when coalesce(p_policy ->> 'backoff', 'exponential') = 'fixed' then v_initial
    else v_initial * power(2::numeric, greatest(p_attempt, 1) - 1)
  end;
  if coalesce((p_policy ->> 'jitter')::boolean, false) then
    v_delay := v_delay * (0.8 + 0.4 * random()::numeric);
  end if;
  v_delay := least(v_delay, v_max);
  return ceil(greatest(v_delay, coalesce(p_retry_after_s, 0)))::integer;
end;
$$;

-- Applies the runner's results. p_results: [{"msg_id", "step_run_id", "ok": true, "output"}
-- | {"msg_id", "step_run_id", "ok": false, "retryable", "retry_after_s", "error", "output"}].
-- Outcome 'applied', or 'ignored' for a late, duplicate or cancelled result (which changes
-- nothing). Every message named is archived.
create or replace function conveyor.write_back(p_results jsonb)
returns table (msg_id bigint, step_run_id bigint, outcome text)
language plpgsql
security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  v_result jsonb;
  v_execution_id bigint;
  v_exec conveyor.executions;
  v_run conveyor.step_runs;
  v_step conveyor.workflow_steps;
  v_error jsonb;
  v_next text;
  v_new_id bigint;
  v_delay integer;
  v_advanced bigint[] := array[]::bigint[];
  v_archived bigint[] := array[]::bigint[];
  v_retry_ids bigint[] := array[]::bigint[];
  v_retry_delays integer[] := array[]::integer[];
begin
  if jsonb_typeof(p_results) is distinct from 'array' then
    raise exception using
      errcode = '22023',
      message = 'write_back: results must be a JSON array',
      hint = '[{"msg_id": .., "step_run_id": .., "ok": true, "output": {...}}]';
  end if;

  -- One result at a time: each result continues its own execution through the
  -- interpreter. Results are taken in step_run order so concurrent writers lock alike.
  for v_result in
    select r.value
    from jsonb_array_elements(p_results) as r (value)
    order by (r.value ->> 'step_run_id')::bigint
  loop
    msg_id := (v_result ->> 'msg_id')::bigint;
    step_run_id := (v_result ->> 'step_run_id')::bigint;
    outcome := 'ignored';

    -- Guards first: lock the execution, then the step run (the order every writer uses),
    -- then check both are still waiting on exactly this message.
    select r.execution_id into v_execution_id from conveyor.step_runs as r where r.step_run_id = write_back.step_run_id;
    select e.* into v_exec from conveyor.executions as e where e.execution_id = v_execution_id for update;
    select r.* into v_run from conveyor.step_runs as r where r.step_run_id = write_back.step_run_id for update;

    if v_run.status = 'queued'
      and (write_back.msg_id is null or v_run.msg_id = write_back.msg_id)
      and v_exec.status = 'waiting' and v_exec.wait_kind = 'action' and v_exec.current_step = v_run.step_id
    then
      outcome := 'applied';
      select s.* into v_step
      from conveyor.workflow_steps as s
      where s.workflow_id = v_exec.workflow_id and s.version = v_exec.version and s.step_id = v_run.step_id;

      if coalesce((v_result ->> 'ok')::boolean, false) then
        update conveyor.step_runs as r
        set status = 'completed', output = v_result -> 'output', next_step = v_step.next_step, finished_at = now()
        where r.step_run_id = v_run.step_run_id;
        update conveyor.executions as e
        set
          status = 'running', wait_kind = null, resume_at = null, current_step = v_step.next_step,
          step_outputs = e.step_outputs
          || jsonb_build_object(v_run.step_id, jsonb_build_object('output', v_result -> 'output'))
        where e.execution_id = v_exec.execution_id;
        v_advanced := v_advanced || v_exec.execution_id;
      else
        v_error := case
          when jsonb_typeof(v_result -> 'error') = 'object' then v_result -> 'error'
          else jsonb_build_object('message', coalesce(v_result ->> 'error', 'action failed'))
        end || jsonb_build_object('attempt', v_run.attempt, 'retryable', coalesce((v_result ->> 'retryable')::boolean, false));

        if coalesce((v_result ->> 'retryable')::boolean, false)
          and v_run.attempt < coalesce((v_step.retry_policy ->> 'attempts')::integer, 1)
        then
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
        else
          v_next := case v_step.on_error when 'continue' then v_step.next_step when 'goto' then v_step.error_step end;
          update conveyor.step_runs as r
          set status = 'failed', output = v_result -> 'output', error = v_error, next_step = v_next, finished_at = now()
          where r.step_run_id = v_run.step_run_id;
          if v_step.on_error in ('continue', 'goto') then
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
            update conveyor.executions as e
            set
              status = 'running', wait_kind = null, resume_at = null, current_step = v_next,
              step_outputs = e.step_outputs || jsonb_build_object(
                v_run.step_id, jsonb_build_object('output', v_result -> 'output', 'error', v_error)
              )
            where e.execution_id = v_exec.execution_id;
            v_advanced := v_advanced || v_exec.execution_id;
          else
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
          end if;
        end if;
      end if;
    end if;

    if write_back.msg_id is not null then
      v_archived := v_archived || write_back.msg_id;
    end if;
    return next;
  end loop;
  -- Batched: the continued executions run on to their next stopping point together (an
  -- execution waits on one action at a time, so a batch holds at most one applied result
  -- per execution), the actions they reached are sent together, and the messages are
  -- archived with one statement.
  if pg_catalog.cardinality(v_advanced) > 0 then
    perform conveyor.advance_executions(v_advanced, now());
    perform conveyor.send_new_actions(v_advanced);
  end if;
  if pg_catalog.cardinality(v_archived) > 0 then
    perform pgmq.archive('conveyor_actions', v_archived);
  end if;
  -- the next attempts, one send per distinct delay
  perform conveyor.send_actions(pg_catalog.array_agg(r.step_run_id), r.delay_s)
  from unnest(v_retry_ids, v_retry_delays) as r (step_run_id, delay_s)
  group by r.delay_s;
end;
$$;

revoke all on function conveyor.enqueue_action(bigint, integer) from public;
revoke all on function conveyor.send_actions(bigint[], integer) from public;
revoke all on function conveyor.send_new_actions(bigint[]) from public;
-- dispatch, which runners call as conveyor_service, sends its new executions' actions
grant execute on function conveyor.send_new_actions(bigint[]) to conveyor_service;
grant execute on function conveyor.enqueue_action(bigint, integer) to conveyor_service;
revoke all on function conveyor.write_back(jsonb) from public;
grant execute on function conveyor.write_back(jsonb) to conveyor_service;
