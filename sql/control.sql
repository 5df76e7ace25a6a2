-- Operator control over executions that already ran (cancel lives with the interpreter).

-- The tenant's execution, locked; a clear error when the tenant has no such execution.
create or replace function conveyor.lock_tenant_execution(p_tenant_id text, p_execution_id bigint)
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
      message = format('execution %s does not exist for tenant "%s"', p_execution_id, p_tenant_id);
  end if;
  return v_exec;
end;
$$;

revoke all on function conveyor.lock_tenant_execution(text, bigint) from public;

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
  perform conveyor.run_executions(array[v_new]);
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
