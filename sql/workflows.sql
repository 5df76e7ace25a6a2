-- Workflow definitions: validate a JSON document, publish it as an immutable version,
-- compile its step graph into conveyor.workflow_steps rows, and keep its subscription.
--
-- The document format is described in docs/workflow-format.md. In short:
--   {"slug", "name", "description"?, "category"?, "tags"?, "active"?,
--    "trigger": {"event", "source"?, "filter"?, "condition"?} | {"manual": true}
--               | {"schedule": {...}} | {"webhook": {...}} | {"date": {...}},
--    "settings"?: {...}, "steps": [{"id", <one kind key>, ...routing keys}, ...]}
--
-- validate_workflow() reports every problem at once, in document order, as
-- "<path>: <message>" (the path names the offending field: steps[2].with.to).
-- publish() stores nothing unless the whole document is valid.
--
-- Validation is conveyor.validate_workflow (sql/workflow_validation.sql) and compilation
-- conveyor.compile_steps (sql/step_kinds.sql); publishing stores the compiled rows the
-- interpreter reads at run time. This file: publishing and the workflows' lifecycle
-- (activate, deactivate, export, delete).


-- Publish a workflow document for a tenant: a new immutable version (or, for a new slug,
-- a new workflow at version 1). An invalid document raises 22023 and stores nothing.
-- Publishing a document identical to the current version (ignoring "active") creates no
-- version and returns the current one; its "active" key, when present, is still applied.
-- When "active" is absent, a new version keeps the workflow's flag (new workflows: active).
drop function if exists conveyor.publish(text, jsonb);
create or replace function conveyor.publish(p_tenant_id text, p_document jsonb)
returns table (workflow_id bigint, version integer)
language plpgsql
security definer
set search_path = ''
set jit = off
as $$
declare
  v_problems text[];
  v_slug text := coalesce(p_document ->> 'slug', '?');
  v_trigger jsonb := p_document -> 'trigger';
  v_settings jsonb := coalesce(p_document -> 'settings', '{}');
  v_workflow_id bigint;
  v_current integer;
  v_was_active boolean;
  v_active boolean;
  v_previous jsonb;
  v_version integer;
  v_filter jsonb;
  -- what the workflow counted for in the plan's quotas before this publish
  v_counted boolean;
  v_was_scheduled boolean;
  v_had_endpoint boolean;
begin
  perform conveyor.require_tenant(p_tenant_id);

  v_problems := array(select conveyor.validate_workflow(p_document));
  if cardinality(v_problems) > 0 then
    raise exception using
      errcode = '22023',
      message = format('workflow "%s": %s problem(s): %s', v_slug, cardinality(v_problems), v_problems[1]),
      detail = array_to_string(v_problems, e'\n'),
      hint = 'Fix the problems listed (one per line, each with the path of the field) and publish again; '
      'nothing was stored.';
  end if;

  if not exists (select from conveyor.tenants as t where t.tenant_id = p_tenant_id) then
    raise exception using
      errcode = 'P0002',
      message = format('workflow "%s": tenant "%s" does not exist', v_slug, p_tenant_id),
      hint = 'Create it first: `conveyor tenants add ID` (SQL: conveyor.create_tenant).';
  end if;

  -- what only the tenant's workflows tell: a call to a slug it has not published, or to itself,
  -- a notification template or a campaign it does not have
  v_problems := array(
    select conveyor.document_call_errors(p_tenant_id, p_document)
    union all
    select conveyor.document_notify_template_errors(p_tenant_id, p_document)
    union all
    select conveyor.document_enroll_errors(p_tenant_id, p_document)
  );
  if cardinality(v_problems) > 0 then
    raise exception using
      errcode = '22023',
      message = format('workflow "%s": %s problem(s): %s', v_slug, cardinality(v_problems), v_problems[1]),
      detail = array_to_string(v_problems, e'\n'),
      hint = 'Publish the called workflows (save the notification templates, apply the campaigns) first; nothing was stored.';
  end if;

  -- Create the workflow or lock its row: concurrent publishes of one slug serialise here.
  insert into conveyor.workflows as w (tenant_id, slug, name, description, category, tags, active)
  values (
    p_tenant_id, v_slug, p_document ->> 'name', p_document ->> 'description', p_document ->> 'category',
    array(select jsonb_array_elements_text(coalesce(p_document -> 'tags', '[]'))),
    coalesce((p_document -> 'active')::boolean, true)
  )
  on conflict on constraint workflows_slug_per_tenant do update set updated_at = w.updated_at
  returning w.workflow_id, w.current_version, w.active into v_workflow_id, v_current, v_was_active;

  v_active := coalesce((p_document -> 'active')::boolean, v_was_active);
  v_counted := v_current is not null and v_was_active;
  v_was_scheduled := v_counted and exists (select from conveyor.schedules as s where s.workflow_id = v_workflow_id);
  v_had_endpoint := exists (select from conveyor.webhook_endpoints as e where e.workflow_id = v_workflow_id);

  select wv.definition into v_previous
  from conveyor.workflow_versions as wv
  where wv.workflow_id = v_workflow_id and wv.version = v_current;

  if v_previous is not null and v_previous - 'active' = p_document - 'active' then
    if v_active is distinct from v_was_active then
      perform conveyor.set_workflow_active(p_tenant_id, v_slug, v_active);
    end if;
    return query select v_workflow_id, v_current;
    return;
  end if;

  v_version := coalesce(
    (select max(wv.version) from conveyor.workflow_versions as wv where wv.workflow_id = v_workflow_id), 0
  ) + 1;

  insert into conveyor.workflow_versions (
    workflow_id, version, tenant_id, definition, entry_step, run_once_per_entity, max_executions_per_hour,
    max_concurrent, timeout, retry_policy, on_error, max_steps, flow
  )
  values (
    v_workflow_id, v_version, p_tenant_id, p_document, p_document -> 'steps' -> 0 ->> 'id',
    coalesce((v_settings -> 'run_once_per_entity')::boolean, false),
    (v_settings ->> 'max_executions_per_hour')::numeric::integer,
    (v_settings ->> 'max_concurrent')::numeric::integer,
    case when v_settings ? 'timeout' then conveyor.parse_duration(v_settings ->> 'timeout') end,
    '{"attempts": 1, "backoff": "exponential", "initial": "30s", "max": "1h", "jitter": true}'::jsonb
    || coalesce(v_settings -> 'retry', '{}'),
    coalesce(v_settings ->> 'on_error', 'fail'),
    coalesce((v_settings ->> 'max_steps')::numeric::integer, 1000),
    conveyor.compile_flow(v_settings)
  );

  insert into conveyor.workflow_steps (
    workflow_id, version, step_id, tenant_id, position, kind, action_type, config, next_step, branches,
    on_error, error_step, retry_policy, timeout
  )
  select
    v_workflow_id, v_version, c.step_id, p_tenant_id, c.step_position, c.kind, c.action_type, c.config,
    c.next_step, c.branches, c.on_error, c.error_step, c.retry_policy,
    coalesce(conveyor.parse_duration(c.timeout_text), interval '30 seconds')
  from conveyor.compile_steps(p_document) as c;

  -- Swap the subscription: the old version's row is kept, inactive, for history.
  update conveyor.subscriptions as s set active = false
  where s.workflow_id = v_workflow_id and s.active;

  if v_trigger ? 'event' then
    v_filter := nullif(v_trigger -> 'filter', 'null');
    insert into conveyor.subscriptions (
      tenant_id, workflow_id, version, match_key, source, filter, filter_path, condition, active
    )
    values (
      p_tenant_id, v_workflow_id, v_version, v_trigger ->> 'event', v_trigger ->> 'source', v_filter,
      conveyor.compile_filter(v_filter), nullif(v_trigger -> 'condition', 'null'), v_active
    );
  end if;

  update conveyor.workflows as w
  set
    name = p_document ->> 'name',
    description = p_document ->> 'description',
    category = p_document ->> 'category',
    tags = array(select jsonb_array_elements_text(coalesce(p_document -> 'tags', '[]'))),
    active = v_active,
    current_version = v_version,
    updated_at = now()
  where w.workflow_id = v_workflow_id;

  -- Schedule, webhook and date triggers keep one row per workflow, maintained by their own
  -- files (sql/schedules.sql, sql/webhooks.sql, sql/date_triggers.sql); null removes what
  -- an earlier version had.
  perform conveyor.sync_schedule(v_workflow_id, v_trigger -> 'schedule');
  perform conveyor.sync_webhook(v_workflow_id, v_trigger -> 'webhook');
  perform conveyor.sync_date_trigger(v_workflow_id, v_trigger -> 'date');

  -- The tenant's plan (sql/quotas.sql): a refusal raises, and this publish stores nothing.
  perform conveyor.require_workflow_quotas(
    p_tenant_id, v_workflow_id, v_version, v_counted, v_was_scheduled, v_had_endpoint
  );

  return query select v_workflow_id, v_version;
end;
$$;

-- The workflow of a tenant by slug, locked for update, or an error naming it.
create or replace function conveyor.lock_workflow(p_tenant_id text, p_slug text)
returns conveyor.workflows
language plpgsql
set search_path = ''
as $$
declare
  v_workflow conveyor.workflows;
begin
  select w.* into v_workflow
  from conveyor.workflows as w
  where w.tenant_id = p_tenant_id and w.slug = p_slug
  for update;
  if not found then
    raise exception using
      errcode = 'P0002',
      message = format('workflow "%s" not found for tenant "%s"', p_slug, p_tenant_id),
      hint = 'Publish it first: `conveyor workflows apply -f FILE` (SQL: conveyor.publish).';
  end if;
  return v_workflow;
end;
$$;

-- Activate or deactivate a workflow: flips its flag and its current subscription.
-- Executions already started are untouched (they finish on their pinned version).
-- Returns true when the flag changed.
drop function if exists conveyor.set_workflow_active(text, text, boolean);
create or replace function conveyor.set_workflow_active(p_tenant_id text, p_slug text, p_active boolean)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_workflow conveyor.workflows;
begin
  perform conveyor.require_tenant(p_tenant_id);
  if p_active is null then
    raise exception using errcode = '22023', message = format('workflow "%s": active must be true or false', p_slug);
  end if;
  v_workflow := conveyor.lock_workflow(p_tenant_id, p_slug);

  update conveyor.subscriptions as s set active = false
  where s.workflow_id = v_workflow.workflow_id and s.active
    and (not p_active or s.version <> v_workflow.current_version);
  update conveyor.subscriptions as s set active = true
  where s.workflow_id = v_workflow.workflow_id and s.version = v_workflow.current_version
    and p_active and not s.active;

  update conveyor.workflows as w set active = p_active, updated_at = now()
  where w.workflow_id = v_workflow.workflow_id and w.active is distinct from p_active;
  if found and p_active then
    -- an activated workflow counts again, and its current version must fit the plan
    perform conveyor.require_workflow_quotas(
      p_tenant_id, v_workflow.workflow_id, v_workflow.current_version, false, false, true
    );
    return true;
  end if;
  return found;
end;
$$;

-- The document of a version (default: the current one), with "active" set to the
-- workflow's current flag: what `conveyor export` writes.
drop function if exists conveyor.export_workflow(text, text, integer);
create or replace function conveyor.export_workflow(p_tenant_id text, p_slug text, p_version integer default null)
returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_document jsonb;
  v_active boolean;
begin
  perform conveyor.require_tenant(p_tenant_id);
  select wv.definition, w.active into v_document, v_active
  from conveyor.workflows as w
  join conveyor.workflow_versions as wv
    on wv.workflow_id = w.workflow_id and wv.version = coalesce(p_version, w.current_version)
  where w.tenant_id = p_tenant_id and w.slug = p_slug;
  if not found then
    raise exception using
      errcode = 'P0002',
      message = case when p_version is null
        then format('workflow "%s" not found for tenant "%s"', p_slug, p_tenant_id)
        else format('workflow "%s" of tenant "%s" has no version %s', p_slug, p_tenant_id, p_version)
      end;
  end if;
  return v_document || jsonb_build_object('active', v_active);
end;
$$;

-- Delete a workflow with all its versions, steps and subscriptions. Refused when it has
-- executions (their history pins its versions): deactivate it instead.
drop function if exists conveyor.delete_workflow(text, text);
create or replace function conveyor.delete_workflow(p_tenant_id text, p_slug text)
returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_workflow conveyor.workflows;
  v_executions bigint;
begin
  perform conveyor.require_tenant(p_tenant_id);
  v_workflow := conveyor.lock_workflow(p_tenant_id, p_slug);
  select count(*) into v_executions from conveyor.executions as x where x.workflow_id = v_workflow.workflow_id;
  if v_executions > 0 then
    raise exception using
      errcode = '55006',
      message = format('workflow "%s" has %s execution(s) and cannot be deleted', p_slug, v_executions),
      detail = 'Executions keep the version they ran, so its definition must stay.',
      hint = format('Deactivate it instead: `conveyor workflows deactivate %s --tenant %s`.', p_slug, p_tenant_id);
  end if;
  delete from conveyor.workflows as w where w.workflow_id = v_workflow.workflow_id;
end;
$$;

revoke all on function conveyor.publish(text, jsonb) from public;
revoke all on function conveyor.set_workflow_active(text, text, boolean) from public;
revoke all on function conveyor.export_workflow(text, text, integer) from public;
revoke all on function conveyor.delete_workflow(text, text) from public;
revoke all on function conveyor.lock_workflow(text, text) from public;
grant execute on function conveyor.publish(text, jsonb) to conveyor_app, conveyor_service;
grant execute on function conveyor.set_workflow_active(text, text, boolean) to conveyor_app, conveyor_service;
grant execute on function conveyor.export_workflow(text, text, integer) to conveyor_app, conveyor_service;
grant execute on function conveyor.delete_workflow(text, text) to conveyor_app, conveyor_service;
