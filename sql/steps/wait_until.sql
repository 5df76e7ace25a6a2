-- The wait_until step: {"id", "wait_until": {"entity", "id", "condition", "timeout"},
-- "on_met"?, "on_timeout"?}: the execution waits until a platform row satisfies the
-- condition (sql/waits.sql) or its timeout.

drop function if exists conveyor.document_wait_until_errors(jsonb, text, text[]);

-- wait_until: {"entity", "id", "condition", "timeout"}; the condition's fields are paths into
-- the entity's row ("row.status").
create or replace function conveyor.step_wait_until_errors(p_step jsonb, p_path text, p_step_ids jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_wait jsonb := p_step -> 'wait_until';
  v_path text := p_path || '.wait_until';
begin
  if jsonb_typeof(v_wait) is distinct from 'object' then
    return next format('%s: expected an object with "entity", "id", "condition" and "timeout"', v_path);
    return;
  end if;
  return query
  select k.message
  from conveyor.document_key_errors(v_wait, v_path, array['entity', 'id', 'condition', 'timeout'], '{}') as k (message);
  if v_wait ? 'entity' and (jsonb_typeof(v_wait -> 'entity') <> 'string'
    or not exists (select from conveyor.entities as e where e.entity = v_wait ->> 'entity')) then
    return next format(
      '%s.entity: %s is not a registered entity (see conveyor.entities)', v_path, (v_wait -> 'entity')::text
    );
  end if;
  if v_wait ? 'id' then
    if jsonb_typeof(v_wait -> 'id') not in ('string', 'number') then
      return next format('%s.id: expected the row id or a template such as "{{trigger.entity_id}}"', v_path);
    else
      return query
      select t.message
      from conveyor.document_template_errors(v_wait -> 'id', v_path || '.id', p_step_ids) as t (message);
    end if;
  end if;
  if v_wait ? 'condition' then
    return query
    select c.message
    from conveyor.condition_errors(
      v_wait -> 'condition', v_path || '.condition', conveyor.step_template_roots(false) || array['row']
    ) as c (message);
  end if;
  if v_wait ? 'timeout' then
    return query
    select d.message
    from (select conveyor.document_duration_error(v_wait -> 'timeout', v_path || '.timeout') as message) as d
    where d.message is not null;
  end if;
end;
$$;

-- How a wait_until step runs: as a wait_for_event does (conveyor.wait_begin tells the two
-- apart by the step's kind), with its own dry-run decision.
create or replace function conveyor.step_wait_until_code()
returns jsonb
language sql
immutable
parallel safe
set search_path = ''
as $$
  select conveyor.step_wait_for_event_code() || pg_catalog.jsonb_build_object(
    'decision', $code$pg_catalog.format('would wait until %s %s satisfies the condition, until %s; dry run follows the timeout branch', p_input ->> 'entity', p_input ->> 'id', coalesce(p_output ->> 'timeout_at', 'forever'))$code$
  );
$$;
