-- The call step: {"id", "call": {"workflow": "<slug>" | "{{...}}", "input"?, "wait"?,
-- "timeout"?}, "next"?}: starts the tenant's workflow of that slug, its current version
-- pinned, as a child execution (sql/fanout.sql) whose trigger payload is the input. With
-- wait (the default) the step ends when the callee does and its output is the callee's;
-- with "wait": false the step only starts it. A call to itself, or to a slug the tenant
-- has no published workflow for, is refused at publish when the slug is literal
-- (conveyor.document_call_errors) and fails the step at run time when it is a template;
-- call depth counts in the event chain's depth limit (conveyor.max_event_depth).

create or replace function conveyor.step_call_errors(p_step jsonb, p_path text, p_step_ids jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_spec jsonb := p_step -> 'call';
  v_path text := p_path || '.call';
begin
  if jsonb_typeof(v_spec) is distinct from 'object' then
    return next format('%s: expected an object with "workflow" (a slug)', v_path);
    return;
  end if;
  return query
  select k.message from conveyor.document_key_errors(v_spec, v_path, array['workflow'], array['input', 'wait', 'timeout'])
    as k (message);
  if v_spec ? 'workflow' then
    if jsonb_typeof(v_spec -> 'workflow') <> 'string' then
      return next format('%s.workflow: expected a workflow slug or a template (got %s)', v_path, (v_spec -> 'workflow')::text);
    elsif strpos(v_spec ->> 'workflow', '{{') = 0 and (v_spec ->> 'workflow') !~ '^[a-z0-9][a-z0-9-]*$' then
      return next format('%s.workflow: invalid slug "%s" (lowercase letters, digits and -)', v_path, v_spec ->> 'workflow');
    end if;
  end if;
  if v_spec ? 'wait' and jsonb_typeof(v_spec -> 'wait') <> 'boolean' then
    return next format('%s.wait: expected true or false', v_path);
  end if;
  if v_spec ? 'timeout' then
    return query
    select d.message
    from (select conveyor.document_duration_error(v_spec -> 'timeout', v_path || '.timeout') as message) as d
    where d.message is not null;
  end if;
  return query
  select t.message
  from conveyor.document_template_errors(v_spec - 'wait' - 'timeout', v_path, p_step_ids) as t (message);
end;
$$;

-- Calls a document cannot make for the tenant: a literal slug with no published workflow,
-- or the document's own slug (a workflow calling itself). Checked by conveyor.publish.
create or replace function conveyor.document_call_errors(p_tenant_id text, p_document jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
begin
  return query
  select case
    when c.name = p_document ->> 'slug' then format(
      '%s.call.workflow: workflow "%s" calls itself (a call may not start the workflow it is in)', c.path, c.name)
    else format('%s.call.workflow: tenant "%s" has no published workflow "%s"', c.path, p_tenant_id, c.name)
  end
  from conveyor.document_literal_names(p_document, 'call', 'workflow') as c
  where c.name = p_document ->> 'slug'
    or not exists (
      select from conveyor.workflows as w
      where w.tenant_id = p_tenant_id and w.slug = c.name and w.current_version is not null
    );
end;
$$;

-- How a call step runs (put into the interpreter by conveyor.generate_interpreter,
-- sql/step_kinds.sql).
create or replace function conveyor.step_call_code()
returns jsonb
language sql
immutable
parallel safe
set search_path = ''
as $$
  select pg_catalog.jsonb_build_object(
    'run', $code$
v_output := conveyor.fanout_begin(v_exec, v_step, v_visit, 'call', v_input,
  jsonb_build_array(conveyor.call_child(v_exec, v_step.step_id, v_input, v_where)), p_now, v_dry, v_where);
if v_output ? 'started' then
  if coalesce((v_input ->> 'wait')::boolean, true) then
    v_wait := 'children';
    v_resume := (v_output ->> 'timeout_at')::timestamptz;
  end if;
  v_spawned := v_spawned || array(select jsonb_array_elements_text(v_output -> 'started')::bigint);
end if;
$code$,
    'decision', $code$conveyor.fanout_decision_text(p_output)$code$
  );
$$;
