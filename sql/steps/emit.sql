-- The emit step: {"id", "emit": {"event", "payload"?, "entity_type"?, "entity_id"?}, "next"?}:
-- a new event of the tenant, caused by the execution and charged to its budgets
-- (conveyor.emit_from_execution, sql/budgets.sql).

create or replace function conveyor.step_emit_errors(p_step jsonb, p_path text, p_step_ids jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
begin
  if jsonb_typeof(p_step -> 'emit') <> 'object' then
    return next format('%s.emit: expected an object with "event"', p_path);
    return;
  end if;
  return query
  select k.message
  from conveyor.document_key_errors(
    p_step -> 'emit', p_path || '.emit', array['event'], array['payload', 'entity_type', 'entity_id']
  ) as k (message);
  if (p_step -> 'emit') ? 'event' and (jsonb_typeof(p_step -> 'emit' -> 'event') <> 'string'
    or (p_step -> 'emit' ->> 'event') !~ '^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$') then
    return next format(
      '%s.emit.event: invalid event type %s (expected module.entity.action such as crm.lead.qualified)',
      p_path, (p_step -> 'emit' -> 'event')::text
    );
  end if;
  return query
  select t.message
  from conveyor.document_template_errors((p_step -> 'emit') - 'event', p_path || '.emit', p_step_ids) as t (message);
end;
$$;

-- How an emit step runs (put into the interpreter by conveyor.generate_interpreter, sql/step_kinds.sql).
create or replace function conveyor.step_emit_code()
returns jsonb
language sql
immutable
parallel safe
set search_path = ''
as $$
  select pg_catalog.jsonb_build_object(
    'run', $code$
-- the event, charged to the execution's and its chain's budgets (sql/budgets.sql)
v_output := conveyor.emit_from_execution(v_exec, v_input);
$code$
  );
$$;
