-- The hand-off to the runner and the write-back of its results.
--
-- An external action is a step_run in status 'queued' plus one message in the pgmq queue
-- conveyor_actions carrying the fully rendered input. The runner performs it and calls
-- conveyor.write_back, which (guards first) applies the result exactly once, decides
-- retries and error policies in SQL, archives the message and continues the execution,
-- all in the runner's one transaction.

-- An action's queue message: what the runner needs to perform it, fully rendered. Built
-- here for both senders: the interpreter (a new action, with its step run) and
-- send_actions (a retry, or a message sent again).
create or replace function conveyor.action_message(
  p_run conveyor.step_runs,
  p_workflow_id bigint,
  p_step conveyor.workflow_steps
)
returns jsonb
language plpgsql
immutable
set search_path = ''
as $$
begin
  return jsonb_build_object(
    'step_run_id', p_run.step_run_id,
    'execution_id', p_run.execution_id,
    'tenant_id', p_run.tenant_id,
    'workflow_id', p_workflow_id,
    'step_id', p_run.step_id,
    'action', p_step.action_type,
    -- an action step's spec is its config (conveyor.step_spec, inlined)
    'connection', p_step.config ->> 'connection',
    'input', p_run.input,
    'idempotency_key', p_run.idempotency_key,
    'attempt', p_run.attempt,
    'timeout_s', ceil(extract(epoch from p_step.timeout))::integer
  );
end;
$$;

-- Puts messages into the action queue in the order given, visible after p_delay_s
-- seconds; returns each one's msg_id with the step run it carries. Both senders write
-- through here (the interpreter a new action's, with its step run; send_actions a retry's)
-- and the runners are woken with one notification per transaction (a delayed message is
-- found by their poll once it becomes visible).
--
-- The queue is pgmq's (conveyor_actions); the message rows go into its table with one
-- static statement (what pgmq.send_batch does, without building its SQL per call and
-- without a second pass to map msg_ids back): the runner's read, this send and the
-- archive are the queue's hot path, each written once here (read_actions, archive_actions).
create or replace function conveyor.queue_messages(p_messages jsonb[], p_delay_s integer default 0)
returns table (msg_id bigint, step_run_id bigint)
language plpgsql
set search_path = ''
as $$
begin
  return query
  insert into pgmq.q_conveyor_actions (vt, message)
  select
    pg_catalog.clock_timestamp() + pg_catalog.make_interval(secs => greatest(coalesce(p_delay_s, 0), 0)),
    m.message
  from unnest(p_messages) with ordinality as m (message, n)
  order by m.n
  returning q_conveyor_actions.msg_id, (q_conveyor_actions.message ->> 'step_run_id')::bigint;
  if found and coalesce(p_delay_s, 0) <= 0 then
    perform pg_catalog.pg_notify('conveyor_actions', 'queued');
  end if;
end;
$$;

-- Sends the messages of queued action step_runs (visible after p_delay_s seconds) and
-- records each message's msg_id on its step_run. Returns how many messages were sent.
-- (A new action's message is sent by the interpreter with its step run.)
create or replace function conveyor.send_actions(p_step_run_ids bigint[], p_delay_s integer default 0)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_sent integer;
begin
  if coalesce(pg_catalog.cardinality(p_step_run_ids), 0) = 0 then
    return 0;  -- most write-backs reach no new action
  end if;
  with messages as (
    select r.step_run_id, conveyor.action_message(r.run, r.workflow_id, r.step) as message
    -- Driven by the ids: three primary-key lookups per id, whatever the tables' sizes.
    -- `offset 0` keeps the lateral subquery from being flattened into one join the
    -- planner may reorder: plpgsql's cached generic plan, made while the tables were small
    -- (a new install's first burst), scanned every execution of the workflow per call.
    from unnest(p_step_run_ids) as ids (step_run_id)
    cross join lateral (
      select r.step_run_id, r as run, e.workflow_id, s as step
      from conveyor.step_runs as r
      join conveyor.executions as e on e.execution_id = r.execution_id
      join conveyor.workflow_steps as s
        on s.workflow_id = e.workflow_id and s.version = e.version and s.step_id = r.step_id
      where r.step_run_id = ids.step_run_id and r.status = 'queued' and s.kind = 'action'
      offset 0
    ) as r
  ),
  sent as (
    select q.msg_id, q.step_run_id
    from conveyor.queue_messages(array(select m.message from messages as m order by m.step_run_id), p_delay_s) as q
  )
  update conveyor.step_runs as r
  set msg_id = sent.msg_id
  from sent
  where r.step_run_id = sent.step_run_id;
  get diagnostics v_sent = row_count;
  return v_sent;
end;
$$;

drop function if exists conveyor.send_unsent_actions(bigint[]);  -- folded into send_new_actions
-- the interpreter sends the actions it reaches with their step runs (interpret_executions)
drop function if exists conveyor.send_new_actions(bigint[]);

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

-- The runner's read: up to p_qty visible messages, each made invisible for its own action's
-- timeout (the message's timeout_s, else p_default_timeout_s) plus p_margin_s, rounded up
-- to whole seconds; read_ct counts the delivery. What pgmq.read does, with a visibility
-- timeout per message in the same statement (pgmq.read takes one for the whole batch,
-- and builds its SQL per call). Written against the queue table's layout: the DO block
-- also sets last_read_at where the installed pgmq has that column (pgmq >= 1.5).
do $do$
declare
  v_last_read text := case
    when exists (
      select from pg_catalog.pg_attribute
      where attrelid = 'pgmq.q_conveyor_actions'::regclass and attname = 'last_read_at' and not attisdropped
    ) then 'last_read_at = pg_catalog.clock_timestamp(),'
    else ''
  end;
begin
  execute format($fn$
create or replace function conveyor.read_actions(
  p_qty integer,
  p_margin_s numeric,
  p_default_timeout_s numeric default 30
)
returns table (msg_id bigint, read_ct integer, message jsonb)
language plpgsql
security definer
set search_path = ''
-- One plan for the session: a custom plan per call cost ~90 us of planning per read. The
-- generic plan walks the primary key in msg_id order from its start, whatever the queue's
-- size (enable_seqscan off: a plan made while the queue was small must not scan and sort it).
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
as $$
#variable_conflict use_column
begin
  return query
  with next as (
    select q.msg_id
    from pgmq.q_conveyor_actions as q
    where q.vt <= pg_catalog.clock_timestamp()
    order by q.msg_id
    limit greatest(p_qty, 0)
    for update skip locked
  )
  update pgmq.q_conveyor_actions as m
  set
    %s
    read_ct = m.read_ct + 1,
    vt = pg_catalog.clock_timestamp() + pg_catalog.make_interval(secs => greatest(1, ceil(
      case
        when jsonb_typeof(m.message -> 'timeout_s') = 'number' and (m.message ->> 'timeout_s')::numeric > 0
          then (m.message ->> 'timeout_s')::numeric
        else p_default_timeout_s
      end + p_margin_s
    ))::double precision)
  from next
  where m.msg_id = next.msg_id
  returning m.msg_id, m.read_ct, m.message;
end;
$$
$fn$, v_last_read);
end;
$do$;

revoke all on function conveyor.read_actions(integer, numeric, numeric) from public;
grant execute on function conveyor.read_actions(integer, numeric, numeric) to conveyor_service;

-- Archives the runner's messages: pgmq.archive's statement (delete from the queue table,
-- insert into its archive), written once here rather than built per call. The columns
-- copied are those the queue and its archive table share in the installed pgmq.
do $do$
declare
  v_columns text;
begin
  select string_agg(pg_catalog.quote_ident(q.attname), ', ' order by q.attnum) into v_columns
  from pg_catalog.pg_attribute as q
  join pg_catalog.pg_attribute as a
    on a.attrelid = 'pgmq.a_conveyor_actions'::regclass and a.attname = q.attname and a.attnum > 0
    and not a.attisdropped
  where q.attrelid = 'pgmq.q_conveyor_actions'::regclass and q.attnum > 0 and not q.attisdropped;
  execute format($fn$
create or replace function conveyor.archive_actions(p_msg_ids bigint[])
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_count integer;
begin
  with archived as (
    delete from pgmq.q_conveyor_actions where msg_id = any(p_msg_ids)
    returning %1$s
  )
  insert into pgmq.a_conveyor_actions (%1$s)
  select %1$s from archived;
  get diagnostics v_count = row_count;
  return v_count;
end;
$$
$fn$, v_columns);
end;
$do$;

revoke all on function conveyor.archive_actions(bigint[]) from public;

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
--
-- Set-based on the hot path: the batch's executions and step runs are locked with one
-- statement each (executions first, then step runs, each in id order: the order every
-- writer uses), read with one join, and a successful result changes its execution in
-- memory only; the interpreter continues those executions and writes each one once. Only
-- failures (retries, error policies: the rare path) write row by row.
create or replace function conveyor.write_back(p_results jsonb)
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
set enable_seqscan = off
set enable_hashjoin = off
set enable_mergejoin = off
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

    -- the step run and its execution still wait on exactly this message (and no earlier
    -- result of this batch was applied to the execution: a duplicate in the same batch)
    if v_run.status = 'queued'
      and (write_back.msg_id is null or v_run.msg_id = write_back.msg_id)
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
      else
        v_error := case
          when jsonb_typeof(v_result -> 'error') = 'object' then v_result -> 'error'
          else jsonb_build_object('message', coalesce(v_result ->> 'error', 'action failed'))
        end || jsonb_build_object('attempt', v_run.attempt, 'retryable', coalesce((v_result ->> 'retryable')::boolean, false));

        if coalesce((v_result ->> 'retryable')::boolean, false)
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

    if write_back.msg_id is not null then
      v_archived := v_archived || write_back.msg_id;
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

revoke all on function conveyor.enqueue_action(bigint, integer) from public;
revoke all on function conveyor.send_actions(bigint[], integer) from public;
revoke all on function conveyor.action_message(conveyor.step_runs, bigint, conveyor.workflow_steps) from public;
revoke all on function conveyor.queue_messages(jsonb[], integer) from public;
grant execute on function conveyor.enqueue_action(bigint, integer) to conveyor_service;
revoke all on function conveyor.write_back(jsonb) from public;
grant execute on function conveyor.write_back(jsonb) to conveyor_service;
