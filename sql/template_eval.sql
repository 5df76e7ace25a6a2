-- Templates, evaluated: the value of one `{{ ... }}` expression in a context, its path
-- and then its filters in order (the syntax and the filters are described at the top of
-- sql/templates.sql).

-- The value at a dotted path (as segments) in a context; `now` defaults to now().
-- SQL null when there is no value.
create or replace function conveyor.context_value(p_context jsonb, p_path text[]) returns jsonb
language sql
stable
parallel safe
set search_path = ''
as $$
  select case
    when p_path[1] = 'now' and not coalesce(p_context ? 'now', false)
      then pg_catalog.jsonb_build_object('now', pg_catalog.now()) #> p_path
    else p_context #> p_path
  end;
$$;

-- A JSON value as text inside a rendered string.
create or replace function conveyor.json_text(p_value jsonb) returns text
language sql
immutable
strict
parallel safe
set search_path = ''
as $$
  select case pg_catalog.jsonb_typeof(p_value)
    when 'string' then p_value #>> '{}'
    when 'number' then pg_catalog.trim_scale((p_value #>> '{}')::numeric)::text
    when 'null' then ''
    else p_value::text
  end;
$$;

-- Text with the five characters HTML gives meaning to as entities (& first).
create or replace function conveyor.html_escape(p_text text) returns text
language sql
immutable
strict
parallel safe
set search_path = ''
as $$
  select pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(
    p_text, '&', '&amp;'), '<', '&lt;'), '>', '&gt;'), '"', '&quot;'), '''', '&#39;');
$$;

-- Evaluates one expression against a context. SQL null when the path has no value
-- (and no `default` supplied one); raises 22023 for a malformed expression or a filter
-- that cannot apply to its value. p_item, when given, is the value of the root `item`
-- (a map or filter transform passes each element so, instead of a copy of the context
-- per element, which made those transforms quadratic).
drop function if exists conveyor.template_eval(text, jsonb, text);
create or replace function conveyor.template_eval(
  p_expr text, p_context jsonb, p_where text default null, p_item jsonb default null
)
returns jsonb
language plpgsql
stable
parallel safe
set search_path = ''
as $$
declare
  v_parsed jsonb;
  v_path text[];
  v_value jsonb;
  v_filter jsonb;
  v_index integer;
  v_name text;
  v_args jsonb;
  v_ts timestamp;
  v_number numeric;
  v_duration interval;
  v_tz text;
begin
  if pg_catalog.strpos(p_expr, '|') = 0 and pg_catalog.btrim(p_expr) ~ '^[^\s.{}]+(\.[^\s.{}]+)*$' then
    -- fast path: a plain path without filters
    v_path := pg_catalog.string_to_array(pg_catalog.btrim(p_expr), '.');
    if v_path[1] = 'item' and p_item is not null then
      return p_item #> v_path[2:];
    end if;
    if v_path[1] = 'now' and not p_context ? 'now' then
      return pg_catalog.jsonb_build_object('now', pg_catalog.now()) #> v_path;
    end if;
    return p_context #> v_path;
  end if;
  v_parsed := conveyor.template_parse(p_expr);
  if v_parsed ? 'error' then
    raise exception using errcode = '22023',
      message = pg_catalog.format('%s{{%s}}: %s', coalesce(p_where || ': ', ''), p_expr, v_parsed ->> 'error');
  end if;
  -- roots are checked by template_errors at publish; at run time any root of the context works
  v_path := pg_catalog.string_to_array(v_parsed ->> 'path_text', '.');
  v_value := case
    when v_path[1] = 'item' and p_item is not null then p_item #> v_path[2:]
    when v_path[1] = 'now' and not p_context ? 'now' then pg_catalog.jsonb_build_object('now', pg_catalog.now()) #> v_path
    else p_context #> v_path
  end;
  if v_parsed -> 'filters' = '[]'::jsonb then
    return v_value;
  end if;
  for v_index in 0 .. pg_catalog.jsonb_array_length(v_parsed -> 'filters') - 1 loop
    v_filter := v_parsed -> 'filters' -> v_index;
    v_name := v_filter ->> 'name';
    v_args := v_filter -> 'args';
    if v_name not in ('default', 'upper', 'lower', 'date', 'currency', 'json', 'length', 'add', 'escape', 'raw') then
      raise exception using errcode = '22023',
        message = pg_catalog.format(
          '%s{{%s}}: unknown filter "%s" (expected one of default, upper, lower, date, currency, json, length, add, '
          || 'escape, raw)',
          coalesce(p_where || ': ', ''), p_expr, v_name
        );
    end if;
    continue when v_name = 'raw';  -- marks the expression for render_string; the value is unchanged
    if v_name = 'default' then
      if v_value is null or v_value = 'null'::jsonb then
        v_value := v_args -> 0;
      end if;
      continue;
    end if;
    if v_value is null or v_value = 'null'::jsonb then
      -- missing and null pass through every other filter (length counts null as 0)
      if v_name = 'length' and v_value is not null then
        v_value := '0'::jsonb;
      end if;
      continue;
    end if;
    case v_name
      when 'upper' then
        v_value := pg_catalog.to_jsonb(pg_catalog.upper(conveyor.json_text(v_value)));
      when 'lower' then
        v_value := pg_catalog.to_jsonb(pg_catalog.lower(conveyor.json_text(v_value)));
      when 'json' then
        v_value := pg_catalog.to_jsonb(v_value::text);
      when 'escape' then
        v_value := pg_catalog.to_jsonb(conveyor.html_escape(conveyor.json_text(v_value)));
      when 'length' then
        v_value := pg_catalog.to_jsonb(case pg_catalog.jsonb_typeof(v_value)
          when 'array' then pg_catalog.jsonb_array_length(v_value)
          when 'object' then (select pg_catalog.count(*) from pg_catalog.jsonb_object_keys(v_value))::integer
          else pg_catalog.length(conveyor.json_text(v_value))
        end);
      when 'currency' then
        v_number := conveyor.json_number(v_value);
        if v_number is null then
          raise exception using errcode = '22023',
            message = pg_catalog.format('%s{{%s}}: currency: %s is not a number', coalesce(p_where || ': ', ''), p_expr, v_value);
        end if;
        v_value := pg_catalog.to_jsonb(pg_catalog.round(v_number, 2)::text || coalesce(' ' || (v_args ->> 0), ''));
      else
        -- date, add
        v_ts := conveyor.json_timestamp(v_value);
        if v_ts is null then
          raise exception using errcode = '22023',
            message = pg_catalog.format(
              '%s{{%s}}: %s: %s is not an ISO 8601 date or timestamp', coalesce(p_where || ': ', ''), p_expr, v_name, v_value
            ),
            hint = 'Timestamps look like 2026-05-01T09:30:00Z or 2026-05-01.';
        end if;
        if v_name = 'add' then
          v_duration := conveyor.duration_or_null(v_args ->> 0);
          if v_duration is null then
            raise exception using errcode = '22023',
              message = pg_catalog.format('%s{{%s}}: add: invalid duration %s', coalesce(p_where || ': ', ''), p_expr, v_args -> 0);
          end if;
          v_value := pg_catalog.to_jsonb((pg_catalog.to_jsonb(v_ts + v_duration) #>> '{}') || 'Z');
        else
          v_tz := coalesce(v_args ->> 1, p_context #>> '{tenant,timezone}', 'UTC');
          if not conveyor.timezone_is_valid(v_tz) then
            raise exception using errcode = '22023',
              message = pg_catalog.format('%s{{%s}}: date: unknown time zone "%s"', coalesce(p_where || ': ', ''), p_expr, v_tz);
          end if;
          v_value := pg_catalog.to_jsonb(
            pg_catalog.to_char(pg_catalog.timezone(v_tz, pg_catalog.timezone('UTC', v_ts)), coalesce(v_args ->> 0, 'YYYY-MM-DD'))
          );
        end if;
    end case;
  end loop;
  return v_value;
end;
$$;

-- Raises the "no value" error for an expression (declared jsonb to fit in coalesce).
create or replace function conveyor.template_missing(p_expr text, p_where text) returns jsonb
language plpgsql
stable
parallel safe
set search_path = ''
as $$
declare
  v_path text := pg_catalog.array_to_string(
    array(select pg_catalog.jsonb_array_elements_text(conveyor.template_parse(p_expr) -> 'path')), '.'
  );
begin
  raise exception using
    errcode = '22023',
    message = pg_catalog.format('%s{{%s}}: no value at "%s"', coalesce(p_where || ': ', ''), p_expr, v_path),
    hint = 'Check the path, or give a fallback with | default: ''...''.';
end;
$$;
