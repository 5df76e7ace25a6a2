-- An execution's lifecycle outside its steps: its final bookkeeping (finish_execution), ending it
-- from outside (abort, cancel), and operator control over executions that already ran.

-- The tenant's execution, locked; a clear error when the tenant has no such execution
-- ("execution <id> <p_missing> for tenant ..."). The callers check the tenant first
-- (conveyor.require_tenant, in each function the application role may call: test_tenancy.py).
drop function if exists conveyor.lock_tenant_execution(text, bigint);
create or replace function conveyor.lock_tenant_execution(
  p_tenant_id text,
  p_execution_id bigint,
  p_missing text default 'does not exist'
)
returns conveyor.executions
language plpgsql
set search_path = ''
as $$
declare
  v_exec conveyor.executions;
begin
  select * into v_exec from conveyor.executions as x
  where x.execution_id = p_execution_id and x.tenant_id = p_tenant_id
  for update;
  if not found then
    raise exception using errcode = '22023',
      message = format('execution %s %s for tenant "%s"', p_execution_id, p_missing, p_tenant_id);
  end if;
  return v_exec;
end;
$$;

revoke all on function conveyor.lock_tenant_execution(text, bigint, text) from public;

-- Retry a failed, timed-out or cancelled execution as a new execution of the same version,
-- linked by retry_of: from the step that failed (keeping variables and earlier steps'
-- outputs) or from the start. Returns the new execution's id.
create or replace function conveyor.retry_execution(
  p_tenant_id text,
  p_execution_id bigint,
  p_from_start boolean default false
) returns bigint
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_old conveyor.executions;
  v_entry text;
  v_step text;
  v_new bigint;
begin
  perform conveyor.require_tenant(p_tenant_id);
  v_old := conveyor.lock_tenant_execution(p_tenant_id, p_execution_id);
  if v_old.status not in ('failed', 'timed_out', 'cancelled') then
    raise exception using errcode = '22023',
      message = format('execution %s is %s; only failed, timed-out or cancelled executions can be retried',
        p_execution_id, v_old.status);
  end if;
  -- once: a second retry of the same execution would run its steps (and actions) twice
  -- (the old row is locked above, so two concurrent retries see each other's)
  select e.execution_id into v_new from conveyor.executions as e
  where e.retry_of = p_execution_id and e.tenant_id = p_tenant_id
  order by e.execution_id
  limit 1;
  if v_new is not null then
    raise exception using errcode = '22023',
      message = format('execution %s was already retried as execution %s', p_execution_id, v_new),
      hint = format('Retry execution %s instead if it failed too (`conveyor executions show %s`).', v_new, v_new);
  end if;
  if v_old.parent_execution_id is not null then
    raise exception using errcode = '22023',
      message = format('execution %s is a child of execution %s (a branch, an item or a call of its step "%s");'
        || ' retry execution %s: its retry runs again only the children that did not complete',
        p_execution_id, v_old.parent_execution_id,
        (select f.step_id from conveyor.fanouts as f where f.fanout_id = v_old.fanout_id), v_old.parent_execution_id);
  end if;
  select v.entry_step into v_entry from conveyor.workflow_versions as v
  where v.workflow_id = v_old.workflow_id and v.version = v_old.version;
  v_step := case when p_from_start then v_entry else coalesce(v_old.error ->> 'step', v_old.current_step, v_entry) end;

  insert into conveyor.executions (
    tenant_id, workflow_id, version, event_id, entity_type, entity_id, current_step, trigger, vars,
    step_outputs, depth, timeout_at, retry_of
  )
  select v_old.tenant_id, v_old.workflow_id, v_old.version, v_old.event_id, v_old.entity_type, v_old.entity_id,
    v_step, v_old.trigger,
    case when p_from_start then '{}'::jsonb else v_old.vars end,
    case when p_from_start then '{}'::jsonb else v_old.step_outputs - v_step end,
    v_old.depth, now() + v.timeout, v_old.execution_id
  from conveyor.workflow_versions as v
  where v.workflow_id = v_old.workflow_id and v.version = v_old.version
  returning execution_id into v_new;

  insert into conveyor.execution_logs (tenant_id, execution_id, workflow_id, step_id, level, message, details)
  values
    (v_old.tenant_id, v_old.execution_id, v_old.workflow_id, v_step, 'info',
      format('retried as execution %s from %s', v_new,
        case when p_from_start then 'the start' else format('step "%s"', v_step) end),
      jsonb_build_object('retried_as', v_new)),
    (v_old.tenant_id, v_new, v_old.workflow_id, v_step, 'info',
      format('retry of execution %s', v_old.execution_id), jsonb_build_object('retry_of', v_old.execution_id));

  perform conveyor.record_started(array[v_new]);
  -- (over its key's concurrency it waits for a slot, sql/flow_control.sql)
  if conveyor.flow_admit_started(v_new) then
    perform conveyor.run_executions(array[v_new]);
  end if;
  return v_new;
end;
$$;

revoke all on function conveyor.retry_execution(text, bigint, boolean) from public;
grant execute on function conveyor.retry_execution(text, bigint, boolean) to conveyor_app, conveyor_service;

-- Pause a live execution: it takes no further step until resumed. An action already
-- handed to a runner is still performed and its result recorded; a delay that ends while
-- paused waits for the resume. Returns false if it was already paused.
create or replace function conveyor.pause_execution(p_tenant_id text, p_execution_id bigint)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_exec conveyor.executions;
begin
  perform conveyor.require_tenant(p_tenant_id);
  v_exec := conveyor.lock_tenant_execution(p_tenant_id, p_execution_id);
  if v_exec.status not in ('pending', 'running', 'waiting') then
    raise exception using errcode = '22023',
      message = format('execution %s is %s; only pending, running or waiting executions can be paused',
        p_execution_id, v_exec.status);
  end if;
  if v_exec.paused_at is not null then
    return false;
  end if;
  update conveyor.executions set paused_at = now() where execution_id = p_execution_id;
  insert into conveyor.execution_logs (tenant_id, execution_id, workflow_id, step_id, level, message)
  values (v_exec.tenant_id, p_execution_id, v_exec.workflow_id, v_exec.current_step, 'info',
    format('paused at step "%s"', v_exec.current_step));
  -- and its fan-outs' children with it (sql/fanout_join.sql)
  perform conveyor.fanout_pause_children(p_execution_id, true);
  return true;
end;
$$;

-- Resume a paused execution: it continues where it stopped (a delay already over ends at
-- the next tick). Returns false if it was not paused.
create or replace function conveyor.resume_execution(p_tenant_id text, p_execution_id bigint)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_exec conveyor.executions;
begin
  perform conveyor.require_tenant(p_tenant_id);
  v_exec := conveyor.lock_tenant_execution(p_tenant_id, p_execution_id);
  if v_exec.paused_at is null then
    return false;
  end if;
  update conveyor.executions set paused_at = null where execution_id = p_execution_id;
  insert into conveyor.execution_logs (tenant_id, execution_id, workflow_id, step_id, level, message)
  values (v_exec.tenant_id, p_execution_id, v_exec.workflow_id, v_exec.current_step, 'info',
    format('resumed at step "%s"', v_exec.current_step));
  -- its fan-outs' children, and a join decided while it was paused (sql/fanout_join.sql)
  perform conveyor.fanout_pause_children(p_execution_id, false);
  if v_exec.status in ('pending', 'running') then
    perform conveyor.run_executions(array[p_execution_id]);
  end if;
  return true;
end;
$$;

revoke all on function conveyor.pause_execution(text, bigint) from public;
revoke all on function conveyor.resume_execution(text, bigint) from public;
grant execute on function conveyor.pause_execution(text, bigint) to conveyor_app, conveyor_service;
grant execute on function conveyor.resume_execution(text, bigint) to conveyor_app, conveyor_service;
-- The workflow_stats shard a transaction writes: its backend's. Each writing transaction
-- adds all its counts for a workflow to one row, and concurrent writers (dispatchers,
-- runners' write-backs) mostly write different rows, so they do not queue on each other's
-- row locks until commit (with shard = execution_id % 16, every batch touched most shards
-- and two runners' write-backs waited on each other). Readers sum the shards.
create or replace function conveyor.stats_shard() returns smallint
language plpgsql
stable
set search_path = ''
as $$
begin
  return (pg_catalog.pg_backend_pid() % 16)::smallint;
end;
$$;

-- Final bookkeeping of an execution: final status, finished_at, error, the sharded stats
-- row (conveyor.stats_shard) and an operator log line for failures.
-- Returns false (and changes nothing) when the execution is already final.
create or replace function conveyor.finish_execution(
  p_execution_id bigint,
  p_status text,
  p_error jsonb default null
) returns boolean
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_exec conveyor.executions;
begin
  if p_status not in ('completed', 'failed', 'cancelled', 'timed_out') then
    raise exception using
      errcode = '22023',
      message = format('execution %s: "%s" is not a final status', p_execution_id, p_status),
      hint = 'use completed, failed, cancelled or timed_out';
  end if;

  update conveyor.executions as e
  set
    status = p_status,
    error = coalesce(p_error, e.error, case when p_status = 'failed' then '{"message": "failed"}'::jsonb end),
    finished_at = greatest(now(), coalesce(e.started_at, e.created_at)),
    started_at = coalesce(e.started_at, now()),
    wait_kind = null,
    resume_at = null,
    -- one still queued for a concurrency slot (not admitted: no resume_at) holds none
    flow_key = case when e.wait_kind = 'slot' and e.resume_at is null then null else e.flow_key end
  where e.execution_id = p_execution_id
    and e.status not in ('completed', 'failed', 'cancelled', 'timed_out')
  returning e.* into v_exec;

  if not found then
    return false;
  end if;
  -- a fan-out's child: counted in its fan-out (sql/fanout_join.sql)
  if v_exec.fanout_id is not null then
    perform conveyor.fanout_follow_up(null, array[p_execution_id]);
  end if;
  -- its concurrency slot goes to the next execution queued on its key (sql/flow_control.sql)
  if v_exec.flow_key is not null then
    perform conveyor.flow_release(array[v_exec.workflow_id], array[v_exec.flow_key]);
  end if;
  -- (a branch or an item of a fan-out is part of its parent's run, not one of its own)
  if v_exec.item is null then
  insert into conveyor.workflow_stats as s (
    workflow_id, shard, tenant_id, completed, failed, cancelled, timed_out, total_duration_ms,
    last_run_at, last_error_at
  )
  values (
    v_exec.workflow_id,
    conveyor.stats_shard(),
    v_exec.tenant_id,
    (p_status = 'completed')::integer,
    (p_status = 'failed')::integer,
    (p_status = 'cancelled')::integer,
    (p_status = 'timed_out')::integer,
    (extract(epoch from v_exec.finished_at - v_exec.started_at) * 1000)::bigint,
    v_exec.finished_at,
    case when p_status in ('failed', 'timed_out') then v_exec.finished_at end
  )
  on conflict (workflow_id, shard) do update
    set
      completed = s.completed + excluded.completed,
      failed = s.failed + excluded.failed,
      cancelled = s.cancelled + excluded.cancelled,
      timed_out = s.timed_out + excluded.timed_out,
      total_duration_ms = s.total_duration_ms + excluded.total_duration_ms,
      last_run_at = greatest(s.last_run_at, excluded.last_run_at),
      last_error_at = greatest(s.last_error_at, excluded.last_error_at);
  end if;

  if p_status <> 'completed' then
    insert into conveyor.execution_logs (tenant_id, execution_id, workflow_id, step_id, level, message, details)
    values (
      v_exec.tenant_id, v_exec.execution_id, v_exec.workflow_id, v_exec.error ->> 'step',
      case when p_status = 'cancelled' then 'info' else 'error' end,
      format('execution %s %s: %s', p_execution_id, p_status, coalesce(v_exec.error ->> 'message', p_status)),
      v_exec.error
    );
  end if;
  return true;
end;
$$;

-- Ends a live execution from outside (cancellation, maintenance's timeouts): its open
-- step_runs become 'skipped' with the reason, their queued action messages are archived
-- (a later write-back for them is ignored), and the execution gets p_status ('cancelled'
-- or 'timed_out'). The caller holds the execution's row lock or accepts waiting for it.
-- Returns false when the execution was already final.
create or replace function conveyor.abort_execution(p_execution_id bigint, p_status text, p_error jsonb)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_status text;
  v_wait_kind text;
  v_msg_ids bigint[];
begin
  if p_status not in ('cancelled', 'timed_out') then
    raise exception using
      errcode = '22023',
      message = format('execution %s: cannot abort with status "%s"', p_execution_id, p_status),
      hint = 'use cancelled or timed_out';
  end if;
  select e.status, e.wait_kind into v_status, v_wait_kind
  from conveyor.executions as e where e.execution_id = p_execution_id for update;
  if v_status is null or v_status in ('completed', 'failed', 'cancelled', 'timed_out') then
    return false;
  end if;

  with skipped as (
    update conveyor.step_runs as r
    set
      status = 'skipped',
      finished_at = now(),
      error = jsonb_build_object('message', 'execution ' || p_status) || coalesce(p_error - 'step' - 'message', '{}')
    where r.execution_id = p_execution_id and r.status in ('queued', 'running')
    returning r.msg_id
  )

  select array_agg(s.msg_id) filter (where s.msg_id is not null) into v_msg_ids from skipped as s;
  if v_msg_ids is not null then
    perform pgmq.archive('conveyor_actions', v_msg_ids);
  end if;
  if not conveyor.finish_execution(p_execution_id, p_status, p_error) then
    return false;
  end if;
  -- its fan-outs' children end with it (sql/fanout_join.sql)
  perform conveyor.fanout_abort_children(p_execution_id, p_status, p_error);
  -- and the approval it waited on is closed (sql/approval_outcomes.sql)
  if v_wait_kind = 'approval' then
    perform conveyor.approval_close(p_execution_id, p_status);
  end if;
  return true;
end;
$$;

-- Cancels an execution of the tenant (see abort_execution). Returns the execution's status
-- afterwards: 'cancelled', or the final status it already had.
create or replace function conveyor.cancel_execution(
  p_tenant_id text,
  p_execution_id bigint,
  p_reason text default null
) returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_exec conveyor.executions;
begin
  perform conveyor.require_tenant(p_tenant_id);
  v_exec := conveyor.lock_tenant_execution(p_tenant_id, p_execution_id, 'not found');
  if v_exec.status in ('completed', 'failed', 'cancelled', 'timed_out') then
    return v_exec.status;
  end if;
  perform conveyor.abort_execution(
    p_execution_id, 'cancelled',
    jsonb_build_object('step', v_exec.current_step, 'message', coalesce(p_reason, 'cancelled'), 'reason', p_reason)
  );
  return 'cancelled';
end;
$$;

revoke all on function conveyor.finish_execution(bigint, text, jsonb) from public;
revoke all on function conveyor.abort_execution(bigint, text, jsonb) from public;
grant execute on function conveyor.abort_execution(bigint, text, jsonb) to conveyor_service;
grant execute on function conveyor.finish_execution(bigint, text, jsonb) to conveyor_service;
grant execute on function conveyor.cancel_execution(text, bigint, text) to conveyor_app, conveyor_service;
