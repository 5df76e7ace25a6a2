-- The transform step: {"id", "transform": {"op": map | filter | aggregate | format_date |
-- render, ...}, "next"?}: a value computed from the context (conveyor.transform_value).

drop function if exists conveyor.document_transform_errors(jsonb, text, text[]);
drop function if exists conveyor.document_transform_errors(jsonb, text, jsonb);

-- A transform step: map, filter, aggregate, format_date or render, with optional "into".
create or replace function conveyor.step_transform_errors(p_step jsonb, p_path text, p_step_ids jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_transform jsonb := p_step -> 'transform';
  v_path text := p_path || '.transform';
  v_op text := v_transform ->> 'op';
  v_required text[];
begin
  if jsonb_typeof(v_transform) is distinct from 'object' then
    return next format('%s: expected an object with "op"', v_path);
    return;
  end if;
  v_required := case v_op
    when 'map' then array['op', 'source', 'template']
    when 'filter' then array['op', 'source', 'where']
    when 'aggregate' then array['op', 'source', 'function']
    when 'format_date' then array['op', 'value', 'format']
    when 'render' then array['op', 'template']
  end;
  if v_required is null then
    return next format(
      '%s.op: %s (expected one of: map, filter, aggregate, format_date, render)',
      v_path, case when v_transform ? 'op' then 'unknown transform ' || (v_transform -> 'op')::text
        else 'required key is missing' end
    );
    return;
  end if;
  return query
  select k.message
  from conveyor.document_key_errors(
    v_transform, v_path, v_required,
    array['into'] || case v_op when 'aggregate' then array['field'] when 'format_date' then array['timezone']
      else '{}'::text[] end
  ) as k (message);

  if v_op = 'aggregate' and v_transform ? 'function'
    and (v_transform -> 'function') not in ('"sum"', '"avg"', '"count"', '"min"', '"max"') then
    return next format(
      '%s.function: unknown aggregate %s (expected one of: sum, avg, count, min, max)',
      v_path, (v_transform -> 'function')::text
    );
  end if;
  if v_op = 'aggregate' and v_transform ? 'field' and jsonb_typeof(v_transform -> 'field') <> 'string' then
    return next format('%s.field: expected a field name such as "amount"', v_path);
  end if;
  if v_op = 'format_date' and v_transform ? 'format' and jsonb_typeof(v_transform -> 'format') <> 'string' then
    return next format('%s.format: expected a format such as "YYYY-MM-DD"', v_path);
  end if;
  if v_op = 'format_date' and jsonb_typeof(v_transform -> 'timezone') = 'string'
    and strpos(v_transform ->> 'timezone', '{{') = 0 then
    return query
    select z.message
    from (select conveyor.document_timezone_error(v_transform -> 'timezone', v_path || '.timezone') as message) as z
    where z.message is not null;
  end if;
  if v_op = 'render' and jsonb_typeof(v_transform -> 'template') <> 'string' then
    return next format('%s.template: expected a text template', v_path);
  end if;
  if v_transform ? 'into' then
    if jsonb_typeof(v_transform -> 'into') <> 'string' then
      return next format('%s.into: expected a variable name', v_path);
    else
      return query
      select v.message
      from (select conveyor.document_var_error(v_transform ->> 'into', v_path || '.into') as message) as v
      where v.message is not null;
    end if;
  end if;

  -- Templates: source / value / template / timezone; map templates see {{item}}.
  return query
  select t.message
  from (values ('source', 1), ('value', 2), ('template', 3), ('timezone', 4)) as p (part, ord)
  cross join lateral conveyor.document_template_errors(
    v_transform -> p.part, v_path || '.' || p.part, p_step_ids, v_op = 'map' and p.part = 'template'
  ) as t (message)
  where v_transform ? p.part
  order by p.ord;
  if v_op = 'filter' and v_transform ? 'where' then
    return query
    select c.message
    from conveyor.document_condition_errors(v_transform -> 'where', v_path || '.where', p_step_ids, true)
      as c (message);
  end if;
end;
$$;

-- How a transform step runs (put into the interpreter by conveyor.generate_interpreter, sql/step_kinds.sql).
create or replace function conveyor.step_transform_code()
returns jsonb
language sql
immutable
parallel safe
set search_path = ''
as $$
  select pg_catalog.jsonb_build_object(
    'prepare', $code$
v_steps_need_ctx[v_step_pos] := true;
$code$,
    'run', $code$
v_input := v_spec;
-- a render of one string goes straight to render_string (what transform_value would do)
v_output := jsonb_build_object(
  'value', case
    when v_spec ->> 'op' = 'render' and jsonb_typeof(v_spec -> 'template') = 'string'
      then conveyor.render_string(v_spec ->> 'template', v_ctx, v_where || '.transform.template')
    else conveyor.transform_value(v_spec, v_ctx, v_where || '.transform')
  end
);
if v_spec ? 'into' then
  v_new_vars := jsonb_build_object(v_spec ->> 'into', v_output -> 'value');
end if;
$code$
  );
$$;
