-- Dead letters (table in migrations/0023, docs/queue.md): action messages the engine
-- stopped redelivering, kept with why, listed and requeued by operators.
--
-- A message becomes one in a write-back (sql/write_back.sql): the runner writes a result
-- with "dead_letter": <reason> for a message it must not perform (malformed_message: the
-- runner's check of the body; max_deliveries and step_run_gone: read_actions' verdict), and
-- the database dead-letters a result it refuses (result_refused).

-- How many times a message is delivered without a result before it is dead-lettered
-- (setting conveyor.max_action_deliveries, default 5; read_actions reads the setting).
create or replace function conveyor.max_action_deliveries()
returns bigint
language plpgsql
stable
set search_path = ''
as $$
begin
  return conveyor.limit_setting('max_action_deliveries', 5);
end;
$$;

-- Keeps queued message p_msg_id as a dead letter (the caller archives it). The tenant,
-- execution and step are those of the step run the message names, when it exists; else
-- the tenant the body names. Returns whether the message was still in the queue.
create or replace function conveyor.keep_dead_letter(p_msg_id bigint, p_reason text, p_error text)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
begin
  insert into conveyor.dead_letters (
    tenant_id, msg_id, step_run_id, execution_id, step_id, message, reason, last_error, attempts, enqueued_at
  )
  select
    coalesce(r.tenant_id, case when jsonb_typeof(q.message -> 'tenant_id') = 'string' then q.message ->> 'tenant_id' end),
    q.msg_id, r.step_run_id, r.execution_id, r.step_id, q.message, p_reason, p_error, q.read_ct, q.enqueued_at
  from pgmq.q_conveyor_actions as q
  left join conveyor.step_runs as r on r.step_run_id = conveyor.jsonb_bigint(q.message -> 'step_run_id')
  where q.msg_id = p_msg_id;
  return found;
end;
$$;

-- The tenant's dead letters, newest first (at most p_limit): what `conveyor actions dead`
-- prints. Tenant-checked; the application role may call it (it shows nothing beyond what
-- row-level security lets it select), so a platform's console can show them too.
create or replace function conveyor.list_dead_letters(p_tenant_id text, p_limit integer default 50)
returns table (
  dead_letter_id bigint,
  msg_id bigint,
  execution_id bigint,
  step_id text,
  step_run_id bigint,
  reason text,
  last_error text,
  attempts integer,
  enqueued_at timestamptz,
  dead_at timestamptz,
  message jsonb
)
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  perform conveyor.require_tenant(p_tenant_id);
  if p_limit is null or p_limit < 0 then
    raise exception using
      errcode = '22023',
      message = format('p_limit: %s is not a number of dead letters (0 or more)', coalesce(p_limit::text, 'null'));
  end if;
  return query
  select d.dead_letter_id, d.msg_id, d.execution_id, d.step_id, d.step_run_id, d.reason, d.last_error, d.attempts,
    d.enqueued_at, d.dead_at, d.message
  from conveyor.dead_letters as d
  where d.tenant_id = p_tenant_id
  order by d.dead_letter_id desc
  limit p_limit;
end;
$$;

-- Sends a dead letter's action again: its step runs again (a new step run, the next attempt,
-- with the same input and idempotency key, and a new message) and the dead letter is
-- removed. Returns the new message's msg_id.
--
-- The step must still be the execution's: either it still waits for the action (the
-- dead letter did not fail it), or the dead letter failed the execution at this step and
-- nothing ran after it. Such an execution is opened again, waiting for the action, and its
-- failure no longer counts in the workflow's statistics. An execution that moved on (its
-- error policy continued or went elsewhere), finished otherwise, or was retried is refused:
-- retry the execution instead. A message that names no step run has nothing to run.
create or replace function conveyor.requeue_dead_letter(p_tenant_id text, p_dead_letter_id bigint)
returns bigint
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_dead conveyor.dead_letters;
  v_exec conveyor.executions;
  v_run conveyor.step_runs;
  v_run_id bigint;
  v_retried bigint;
  v_msg_id bigint;
begin
  perform conveyor.require_tenant(p_tenant_id);
  select * into v_dead from conveyor.dead_letters as d
  where d.dead_letter_id = p_dead_letter_id and d.tenant_id = p_tenant_id
  for update;
  if not found then
    raise exception using errcode = '22023',
      message = format('dead letter %s does not exist for tenant "%s"', p_dead_letter_id, p_tenant_id);
  end if;
  if v_dead.step_run_id is null or v_dead.execution_id is null then
    raise exception using errcode = '22023',
      message = format('dead letter %s (%s) names no step run: there is no step to run again', p_dead_letter_id,
        v_dead.reason),
      hint = 'It is removed with the tenant''s history (retention_days).';
  end if;
  v_exec := conveyor.lock_tenant_execution(p_tenant_id, v_dead.execution_id);
  select * into v_run from conveyor.step_runs as r where r.step_run_id = v_dead.step_run_id for update;
  select x.execution_id into v_retried from conveyor.executions as x where x.retry_of = v_exec.execution_id limit 1;

  if v_run.status = 'queued' and exists (select from pgmq.q_conveyor_actions as q where q.msg_id = v_run.msg_id) then
    raise exception using errcode = '22023',
      message = format('dead letter %s: step run %s already has its message %s in the queue; nothing to requeue',
        p_dead_letter_id, v_run.step_run_id, v_run.msg_id);
  elsif v_run.status = 'queued' and v_exec.status = 'waiting' and v_exec.wait_kind = 'action'
    and v_exec.current_step = v_run.step_id
  then
    -- the dead letter did not fail the step: it still waits; a new message for the same run
    v_run_id := v_run.step_run_id;
  elsif v_run.status = 'failed' and v_run.error ? 'dead_letter' and v_exec.status = 'failed'
    and v_exec.error ->> 'step' = v_run.step_id and v_retried is null
    and not exists (
      select from conveyor.step_runs as later
      where later.execution_id = v_exec.execution_id and later.step_run_id > v_run.step_run_id
    )
  then
    insert into conveyor.step_runs (execution_id, tenant_id, step_id, visit, attempt, status, input, idempotency_key)
    values (
      v_run.execution_id, v_run.tenant_id, v_run.step_id, v_run.visit, v_run.attempt + 1, 'queued', v_run.input,
      v_run.idempotency_key
    )
    returning step_runs.step_run_id into v_run_id;
    update conveyor.executions as e
    set status = 'waiting', wait_kind = 'action', current_step = v_run.step_id, resume_at = null, error = null,
      finished_at = null
    where e.execution_id = v_exec.execution_id;
    -- the failure finish_execution counted is undone: the execution is active again
    update conveyor.workflow_stats as s
    set failed = s.failed - 1,
      total_duration_ms = greatest(s.total_duration_ms
        - (extract(epoch from v_exec.finished_at - v_exec.started_at) * 1000)::bigint, 0)
    from (
      select w.shard from conveyor.workflow_stats as w
      where w.workflow_id = v_exec.workflow_id and w.failed > 0
      order by w.shard
      limit 1
    ) as one
    where s.workflow_id = v_exec.workflow_id and s.shard = one.shard;
  else
    raise exception using errcode = '22023',
      message = format('dead letter %s: execution %s is %s%s, and step "%s" is no longer its to run again',
        p_dead_letter_id, v_exec.execution_id, v_exec.status,
        case when v_retried is not null then format(' (retried as execution %s)', v_retried) else '' end,
        v_run.step_id),
      hint = 'Retry the execution instead (conveyor executions retry).';
  end if;

  perform conveyor.send_actions(array[v_run_id], 0);
  select r.msg_id into v_msg_id from conveyor.step_runs as r where r.step_run_id = v_run_id;
  delete from conveyor.dead_letters as d where d.dead_letter_id = p_dead_letter_id;
  insert into conveyor.execution_logs (tenant_id, execution_id, workflow_id, step_id, level, message, details)
  values (
    v_exec.tenant_id, v_exec.execution_id, v_exec.workflow_id, v_run.step_id, 'info',
    format('step "%s" requeued from dead letter %s (%s)', v_run.step_id, p_dead_letter_id, v_dead.reason),
    jsonb_build_object('reason', 'dead_letter_requeued', 'dead_letter_id', p_dead_letter_id, 'step_run_id', v_run_id)
  );
  return v_msg_id;
end;
$$;

revoke all on function conveyor.keep_dead_letter(bigint, text, text) from public;
revoke all on function conveyor.list_dead_letters(text, integer) from public;
revoke all on function conveyor.requeue_dead_letter(text, bigint) from public;
grant execute on function conveyor.list_dead_letters(text, integer) to conveyor_app, conveyor_service;
grant execute on function conveyor.requeue_dead_letter(text, bigint) to conveyor_service;
