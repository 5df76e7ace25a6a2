-- The for_each step: {"id", "for_each": {"items": "{{...}}" | [...], "steps": [<steps>],
-- "concurrency"?, "on_item_error"?, "timeout"?}, "next"?}: the body runs once per item as
-- a child execution (sql/fanout.sql) that sees {{item}} and {{index}}; at most
-- `concurrency` items run at once, the others wait their turn. on_item_error: "fail" (the
-- default: the first failed item fails the step and cancels the rest), "continue" or
-- "collect" (the step goes on; collect also lists the errors). Its output: each item's
-- outcome and output in order, and the counts.

create or replace function conveyor.step_for_each_errors(p_step jsonb, p_path text, p_step_ids jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_spec jsonb := p_step -> 'for_each';
  v_path text := p_path || '.for_each';
  v_items jsonb := v_spec -> 'items';
begin
  if jsonb_typeof(v_spec) is distinct from 'object' then
    return next format('%s: expected an object with "items" and "steps"', v_path);
    return;
  end if;
  return query
  select k.message from conveyor.document_key_errors(
    v_spec, v_path, array['items', 'steps'], array['concurrency', 'on_item_error', 'timeout']
  ) as k (message);
  if v_spec ? 'items' then
    if jsonb_typeof(v_items) = 'string' and strpos(v_items #>> '{}', '{{') > 0 then
      return query
      select t.message from conveyor.document_template_errors(v_items, v_path || '.items', p_step_ids) as t (message);
    elsif jsonb_typeof(v_items) = 'array' then
      return query
      select t.message from conveyor.document_template_errors(v_items, v_path || '.items', p_step_ids) as t (message);
      if jsonb_array_length(v_items) > conveyor.max_fanout_children() then
        return next format('%s.items: %s items exceed the limit of %s (setting conveyor.max_fanout_children)',
          v_path, jsonb_array_length(v_items), conveyor.max_fanout_children());
      end if;
    else
      return next format(
        '%s.items: expected a template such as "{{trigger.payload.lines}}" or an array (got %s)',
        v_path, v_items::text
      );
    end if;
  end if;
  if v_spec ? 'steps' and (jsonb_typeof(v_spec -> 'steps') <> 'array' or v_spec -> 'steps' = '[]') then
    return next format('%s.steps: expected a non-empty array of steps', v_path);
  end if;
  if v_spec ? 'concurrency' then
    return query
    select m.message
    from (select conveyor.document_integer_error(v_spec -> 'concurrency', v_path || '.concurrency', 10000) as message) as m
    where m.message is not null;
  end if;
  if v_spec ? 'on_item_error' and (v_spec -> 'on_item_error') not in ('"fail"', '"continue"', '"collect"') then
    return next format('%s.on_item_error: expected "fail", "continue" or "collect" (got %s)',
      v_path, (v_spec -> 'on_item_error')::text);
  end if;
  if v_spec ? 'timeout' then
    return query
    select d.message
    from (select conveyor.document_duration_error(v_spec -> 'timeout', v_path || '.timeout') as message) as d
    where d.message is not null;
  end if;
end;
$$;

-- The step list a for_each step holds: its body, whose steps see {{item}} and {{index}}.
create or replace function conveyor.step_for_each_bodies(p_step jsonb)
returns table (body text, path text, steps jsonb, item boolean)
language sql
immutable
set search_path = ''
as $$
  select 'steps', '.for_each.steps', p_step -> 'for_each' -> 'steps', true
  where jsonb_typeof(p_step -> 'for_each') = 'object';
$$;

-- How a for_each step runs (put into the interpreter by conveyor.generate_interpreter,
-- sql/step_kinds.sql): one child execution per item of the rendered list.
create or replace function conveyor.step_for_each_code()
returns jsonb
language sql
immutable
parallel safe
set search_path = ''
as $$
  select pg_catalog.jsonb_build_object(
    'prepare', $code$
-- only the step's own fields are rendered here: the body's steps render in the children
v_steps_render[v_step_pos] := conveyor.render_plan(coalesce(v_spec, '{}') - 'steps', 'step "' || v_step.step_id || '".for_each', false);
v_steps_need_ctx[v_step_pos] := coalesce((v_steps_render[v_step_pos] ->> 'context')::boolean, false);
$code$,
    'run', $code$
if jsonb_typeof(v_input -> 'items') is distinct from 'array' then
  raise exception using errcode = '22023', message = format(
    '%s: for_each.items is %s, expected an array (from %s)', v_where,
    coalesce(jsonb_typeof(v_input -> 'items'), 'missing'), v_spec -> 'items');
end if;
v_output := conveyor.fanout_begin(v_exec, v_step, v_visit, 'for_each', v_input - 'items', (
  select coalesce(jsonb_agg(jsonb_build_object(
    'key', i.n - 1, 'entry', v_spec -> 'steps' -> 0 ->> 'id',
    'item', jsonb_build_object('item', i.value, 'index', i.n - 1)
  ) order by i.n), '[]')
  from jsonb_array_elements(v_input -> 'items') with ordinality as i (value, n)
), p_now, v_dry, v_where);
v_input := v_input - 'items' || jsonb_build_object('count', jsonb_array_length(v_input -> 'items'));
if v_output ? 'started' then
  v_wait := 'children';
  v_resume := (v_output ->> 'timeout_at')::timestamptz;
  v_spawned := v_spawned || array(select jsonb_array_elements_text(v_output -> 'started')::bigint);
end if;
$code$,
    'decision', $code$conveyor.fanout_decision_text(p_output)$code$
  );
$$;
