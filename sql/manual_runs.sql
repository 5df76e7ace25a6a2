-- Starting a workflow without an event: manual runs (SQL, CLI, HTTP) and schedules.

-- Create and run one execution of a workflow's current version. Internal: callers check
-- the tenant and the workflow's state first.
create or replace function conveyor.start_workflow(
  p_workflow_id bigint,
  p_trigger jsonb,
  p_entity_type text default null,
  p_entity_id text default null
) returns bigint
language plpgsql
set search_path = ''
as $$
declare
  v_execution_id bigint;
begin
  insert into conveyor.executions (
    tenant_id, workflow_id, version, entity_type, entity_id, current_step, trigger, timeout_at
  )
  select w.tenant_id, w.workflow_id, v.version, p_entity_type, p_entity_id, v.entry_step,
    p_trigger, now() + v.timeout
  from conveyor.workflows as w
  join conveyor.workflow_versions as v on v.workflow_id = w.workflow_id and v.version = w.current_version
  where w.workflow_id = p_workflow_id
  returning execution_id into v_execution_id;
  if v_execution_id is null then
    raise exception using errcode = '22023',
      message = format('workflow %s does not exist or has no published version', p_workflow_id);
  end if;
  perform conveyor.record_started(array[v_execution_id]);
  -- (over its key's concurrency it waits for a slot, sql/flow_control.sql)
  if conveyor.flow_admit_started(v_execution_id) then
    perform conveyor.run_executions(array[v_execution_id]);
  end if;
  return v_execution_id;
end;
$$;

-- Start a workflow by slug with the given data, as {{trigger.payload...}}. For
-- applications (checks the tenant); the workflow must be active.
create or replace function conveyor.trigger_workflow(
  p_tenant_id text,
  p_slug text,
  p_data jsonb default '{}',
  p_entity_type text default null,
  p_entity_id text default null
) returns bigint
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_workflow conveyor.workflows;
begin
  perform conveyor.require_tenant(p_tenant_id);
  select * into v_workflow from conveyor.workflows as w
  where w.tenant_id = p_tenant_id and w.slug = p_slug;
  if not found then
    raise exception using errcode = '22023',
      message = format('workflow "%s" does not exist for tenant "%s"', p_slug, p_tenant_id);
  end if;
  if not v_workflow.active then
    raise exception using errcode = '22023',
      message = format('workflow "%s" is not active', p_slug),
      hint = format('activate it first: `conveyor workflows activate %s`', p_slug);
  end if;
  if p_data is null or jsonb_typeof(p_data) <> 'object' then
    raise exception using errcode = '22023',
      message = format('workflow "%s": manual run data must be a JSON object', p_slug);
  end if;
  perform conveyor.require_execution_quota(p_tenant_id);
  return conveyor.start_workflow(
    v_workflow.workflow_id,
    jsonb_build_object(
      'kind', 'manual', 'payload', p_data, 'entity_type', p_entity_type, 'entity_id', p_entity_id,
      'occurred_at', now(), 'depth', 0
    ),
    p_entity_type, p_entity_id
  );
end;
$$;

revoke all on function conveyor.trigger_workflow(text, text, jsonb, text, text) from public;
grant execute on function conveyor.trigger_workflow(text, text, jsonb, text, text)
to conveyor_app, conveyor_service;
