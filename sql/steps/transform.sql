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


-- The most elements a map or filter transform takes (setting conveyor.max_transform_items,
-- default 10000): each element renders a template or evaluates a condition.
-- (plpgsql: a SQL function called from plpgsql is planned again in every transaction)
create or replace function conveyor.max_transform_items() returns integer
language plpgsql
stable
parallel safe
set search_path = ''
as $$
begin
  return coalesce(nullif(pg_catalog.current_setting('conveyor.max_transform_items', true), '')::integer, 10000);
end;
$$;

-- A transform step's value: map / filter / aggregate over an array, format_date, render.
-- map and filter pass each element to render / eval_condition as the `item` root (p_item)
-- rather than a copy of the context per element (which made them quadratic in the list's
-- length when the list is in the context, as it usually is), and collect the results in
-- one aggregate or array: linear in the list. A map's result is bounded like a rendered
-- value (conveyor.max_rendered_bytes), checked as it grows.
create or replace function conveyor.transform_value(p_spec jsonb, p_context jsonb, p_where text)
returns jsonb
language plpgsql
stable
set search_path = ''
as $$
declare
  v_op text := p_spec ->> 'op';
  v_source jsonb;
  v_result jsonb;
  v_field text[] := pg_catalog.string_to_array(p_spec ->> 'field', '.');
  v_function text := p_spec ->> 'function';
  v_bad jsonb;
  v_tz text;
  v_items jsonb[] := '{}';
  v_item jsonb;
  v_count integer := 0;
  v_bytes bigint := 0;
  v_max_bytes integer;
begin
  if v_op in ('map', 'filter', 'aggregate') then
    v_source := conveyor.render(p_spec -> 'source', p_context, p_where || '.source');
    if jsonb_typeof(v_source) is distinct from 'array' then
      raise exception using
        errcode = '22023',
        message = format('%s.source: expected an array, got %s', p_where, coalesce(jsonb_typeof(v_source), 'nothing')),
        hint = 'source is one {{...}} reference to an array, e.g. "{{trigger.payload.items}}"';
    end if;
    if v_op in ('map', 'filter') and jsonb_array_length(v_source) > conveyor.max_transform_items() then
      raise exception using
        errcode = '54000',
        message = format(
          '%s.source: %s has %s items, over the limit of %s (setting conveyor.max_transform_items)',
          p_where, v_op, jsonb_array_length(v_source), conveyor.max_transform_items()
        ),
        hint = 'Split the list (a filter first, or the event) into smaller ones.';
    end if;
  end if;

  case v_op
    when 'map' then
      v_max_bytes := conveyor.max_rendered_bytes();
      for v_item in select i.item from jsonb_array_elements(v_source) as i (item) loop
        v_count := v_count + 1;
        v_items[v_count] := conveyor.render(p_spec -> 'template', p_context, p_where || '.template', v_item);
        v_bytes := v_bytes + coalesce(pg_catalog.pg_column_size(v_items[v_count]), 0);
        if v_bytes > v_max_bytes then
          perform conveyor.render_too_large(p_where || '.template', v_bytes, format('map (after %s items)', v_count));
        end if;
      end loop;
      v_result := to_jsonb(v_items);
    when 'filter' then
      select coalesce(jsonb_agg(i.item order by i.n), '[]')
      into v_result
      from jsonb_array_elements(v_source) with ordinality as i (item, n)
      where conveyor.eval_condition(p_spec -> 'where', p_context, i.item);
    when 'aggregate' then
      if v_function in ('sum', 'avg') then
        select v.value into v_bad
        from (
          select case when v_field is null then i.item else i.item #> v_field end as value
          from jsonb_array_elements(v_source) as i (item)
        ) as v
        where jsonb_typeof(v.value) not in ('number', 'null')
        limit 1;
        if found then
          raise exception using
            errcode = '22023',
            message = format('%s: %s needs numbers, got %s', p_where, v_function, v_bad),
            hint = 'name the numeric field with "field"';
        end if;
      end if;
      select
        case v_function
          when 'count' then to_jsonb(count(*) filter (where v.value is not null and v.value <> 'null'))
          when 'sum' then to_jsonb(coalesce(sum((v.value #>> '{}')::numeric), 0))
          when 'avg' then to_jsonb(avg((v.value #>> '{}')::numeric))
          when 'min' then (array_agg(v.value order by v.value) filter (where v.value <> 'null'))[1]
          when 'max' then (array_agg(v.value order by v.value desc) filter (where v.value <> 'null'))[1]
        end
      into v_result
      from (
        select case when v_field is null then i.item else i.item #> v_field end as value
        from jsonb_array_elements(v_source) as i (item)
      ) as v;
      if v_function not in ('count', 'sum', 'avg', 'min', 'max') or v_function is null then
        raise exception using
          errcode = '22023',
          message = format('%s.function: unknown aggregate "%s"', p_where, v_function),
          hint = 'use sum, avg, count, min or max';
      end if;
    when 'format_date' then
      v_tz := coalesce(
        conveyor.render(p_spec -> 'timezone', p_context, p_where || '.timezone') #>> '{}',
        p_context #>> '{tenant,timezone}',
        'UTC'
      );
      v_result := to_jsonb(pg_catalog.to_char(
        (conveyor.render(p_spec -> 'value', p_context, p_where || '.value') #>> '{}')::timestamptz
        at time zone v_tz,
        coalesce(p_spec ->> 'format', 'YYYY-MM-DD"T"HH24:MI:SS')
      ));
    when 'render' then
      v_result := conveyor.render(p_spec -> 'template', p_context, p_where || '.template');
    else
      raise exception using
        errcode = '22023',
        message = format('%s.op: unknown transform "%s"', p_where, v_op),
        hint = 'use map, filter, aggregate, format_date or render';
  end case;
  return v_result;
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
