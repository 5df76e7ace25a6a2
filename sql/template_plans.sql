-- Templates, planned: a step's rendering worked out once per batch and applied to each
-- execution (the interpreter's hot path), with the same result as conveyor.render.

-- Render plans: what conveyor.render does to one value, worked out once per step instead
-- of once per execution. A plan is {"value": <the value>, "slots": [...], "context": <bool>,
-- "where": <p_where>},
-- one slot per string holding a template, in the order render visits them (keys in jsonb
-- order, array elements in order, depth first): {"at": <text[] literal: where the string
-- is>, "text": <the string>, "where": <its location for errors>} and, when the string is
-- exactly one plain path (no filters, not `now`), "path": <that path as a text[] literal>;
-- when that path starts at trigger, steps or vars, also "root" and "rest" (the path after
-- the root). "context" is false when every slot has a root: such a plan renders from the
-- execution's trigger, step outputs and vars alone, with no context object built (see
-- render_planned). The interpreter plans each step once per batch (conveyor.render_plan)
-- and renders each execution with conveyor.render_planned: same value, same errors as
-- render, without re-scanning the value's JSON text and keys on every execution.
-- p_escape_html (an email.send action's `with`): the slots under the value's `html` key
-- get "escape": true, and render_planned HTML-escapes the values their expressions insert
-- (render_string's p_escape), so a trigger value cannot inject markup into the email.
drop function if exists conveyor.render_plan(jsonb, text);
create or replace function conveyor.render_plan(p_value jsonb, p_where text default null, p_escape_html boolean default false)
returns jsonb
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
declare
  v_slots jsonb := '[]';
  -- the walk: containers still to visit as [value, path, where], depth first
  v_todo jsonb := pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_array(p_value, '[]'::jsonb, p_where));
  v_entry jsonb;
  v_item jsonb;
  v_path jsonb;
  v_where text;
  v_next jsonb;
  v_key text;
  v_text text;
  v_expr text;
  v_close integer;
  v_parts text[];
  v_context boolean := false;  -- whether a slot needs the whole context
begin
  if p_value is null or pg_catalog.strpos(p_value::text, '{{') = 0 then
    return pg_catalog.jsonb_build_object('value', p_value, 'slots', v_slots, 'context', false);
  end if;
  while pg_catalog.jsonb_array_length(v_todo) > 0 loop
    v_entry := v_todo -> 0;
    v_todo := v_todo - 0;
    v_item := v_entry -> 0;
    v_path := v_entry -> 1;
    v_where := v_entry ->> 2;
    if pg_catalog.jsonb_typeof(v_item) = 'string' then
      v_text := v_item #>> '{}';
      v_entry := pg_catalog.jsonb_build_object(
        'at', array(select pg_catalog.jsonb_array_elements_text(v_path))::text,
        'text', v_text,
        'where', v_where
      );
      -- render_string's whole-string case with its fast path (a plain path, not `now`)
      v_close := pg_catalog.strpos(pg_catalog.substr(v_text, 3), '}}');
      v_expr := pg_catalog.btrim(pg_catalog.substr(v_text, 3, greatest(v_close - 1, 0)));
      if pg_catalog.left(v_text, 2) = '{{' and v_close > 0 and v_close + 3 = pg_catalog.length(v_text)
        and pg_catalog.strpos(v_expr, '|') = 0 and v_expr ~ '^[^\s.{}]+(\.[^\s.{}]+)*$'
        and pg_catalog.split_part(v_expr, '.', 1) <> 'now' then
        v_parts := pg_catalog.string_to_array(v_expr, '.');
        v_entry := v_entry || pg_catalog.jsonb_build_object('path', v_parts::text);
        if v_parts[1] in ('trigger', 'steps', 'vars') then
          v_entry := v_entry || pg_catalog.jsonb_build_object(
            'root', v_parts[1], 'rest', v_parts[2:pg_catalog.cardinality(v_parts)]::text
          );
        end if;
      end if;
      if p_escape_html and v_path ->> 0 = 'html' then
        v_entry := v_entry || '{"escape": true}';
      end if;
      v_context := v_context or not v_entry ? 'root';
      v_slots := v_slots || pg_catalog.jsonb_build_array(v_entry);
      continue;
    end if;
    -- a container: its members holding a template, in render's order, before the rest
    v_next := '[]';
    if pg_catalog.jsonb_typeof(v_item) = 'object' then
      for v_key in select k.key from pg_catalog.jsonb_each(v_item) with ordinality as k (key, value, n) order by k.n loop
        continue when pg_catalog.strpos((v_item -> v_key)::text, '{{') = 0;
        v_next := v_next || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_array(
          v_item -> v_key,
          v_path || pg_catalog.to_jsonb(v_key),
          case
            when v_key ~ '^[A-Za-z_][A-Za-z0-9_]*$' then pg_catalog.ltrim(coalesce(v_where, '') || '.' || v_key, '.')
            else coalesce(v_where, '') || '[' || pg_catalog.to_jsonb(v_key)::text || ']'
          end
        ));
      end loop;
    elsif pg_catalog.jsonb_typeof(v_item) = 'array' then
      select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array(
        a.value, v_path || pg_catalog.to_jsonb((a.n - 1)::text), coalesce(v_where, '') || '[' || (a.n - 1) || ']'
      ) order by a.n), '[]')
      into v_next
      from pg_catalog.jsonb_array_elements(v_item) with ordinality as a (value, n)
      where pg_catalog.strpos(a.value::text, '{{') > 0;
    end if;
    v_todo := v_next || v_todo;
  end loop;
  return pg_catalog.jsonb_build_object('value', p_value, 'slots', v_slots, 'context', v_context, 'where', p_where);
end;
$$;

-- Renders a value by its plan (conveyor.render_plan): the same result and errors as
-- conveyor.render(value, context, where) for the value and where the plan was made from
-- (and a slot marked "escape" rendered HTML-escaped). The whole value may not grow past
-- conveyor.max_rendered_bytes(): its size is checked after each slot is set.
-- Either with the context, or (for a plan whose "context" is false) with p_context null
-- and the execution's trigger, step outputs and vars, from which such a plan's paths read:
-- the context object, which copies all three, is then never built.
drop function if exists conveyor.render_planned(jsonb, jsonb);
create or replace function conveyor.render_planned(
  p_plan jsonb,
  p_context jsonb,
  p_trigger jsonb default null,
  p_steps jsonb default null,
  p_vars jsonb default null
)
returns jsonb
language plpgsql
stable
parallel safe
set search_path = ''
as $$
declare
  v_result jsonb := p_plan -> 'value';
  v_slots jsonb := p_plan -> 'slots';
  v_slot jsonb;
  v_value jsonb;
  v_at text[];
  v_max integer;
begin
  if v_slots = '[]'::jsonb then
    return v_result;
  end if;
  -- conveyor.max_rendered_bytes(), inlined: this is the hot path
  v_max := coalesce(nullif(pg_catalog.current_setting('conveyor.max_rendered_bytes', true), '')::integer, 1048576);
  for v_index in 0 .. pg_catalog.jsonb_array_length(v_slots) - 1 loop
    v_slot := v_slots -> v_index;
    v_value := case
      when v_slot ? 'escape' then null  -- always rendered by render_string, which escapes
      when p_context is not null then p_context #> (v_slot ->> 'path')::text[]
      when v_slot ->> 'root' = 'trigger' then p_trigger #> (v_slot ->> 'rest')::text[]
      when v_slot ->> 'root' = 'steps' then p_steps #> (v_slot ->> 'rest')::text[]
      when v_slot ->> 'root' = 'vars' then p_vars #> (v_slot ->> 'rest')::text[]
    end;
    if v_value is null then
      -- the general case, and a missing value's error (a rooted path misses in the three
      -- parts as it would in the whole context)
      v_value := conveyor.render_string(
        v_slot ->> 'text',
        coalesce(p_context, pg_catalog.jsonb_build_object('trigger', p_trigger, 'steps', p_steps, 'vars', p_vars)),
        v_slot ->> 'where',
        null,
        v_slot ? 'escape'
      );
    end if;
    v_at := (v_slot ->> 'at')::text[];
    if pg_catalog.cardinality(v_at) = 0 then
      -- the value is one string
      if pg_catalog.pg_column_size(v_value) > v_max then
        return conveyor.render_too_large(v_slot ->> 'where', pg_catalog.pg_column_size(v_value));
      end if;
      return v_value;
    end if;
    v_result := pg_catalog.jsonb_set(v_result, v_at, coalesce(v_value, 'null'::jsonb));
    if pg_catalog.pg_column_size(v_result) > v_max then
      return conveyor.render_too_large(p_plan ->> 'where', pg_catalog.pg_column_size(v_result), 'input');
    end if;
  end loop;
  return v_result;
end;
$$;
