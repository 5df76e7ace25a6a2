-- Templates: `{{ path | filter: arg, arg | filter }}` inside JSON strings.
--
-- * A path is dotted from a root (`trigger.payload.email`, `steps.fetch.output.items.0`);
--   roots: trigger, steps, vars, execution, tenant, now, item. `now` is context.now,
--   or now() when the context has none.
-- * A string that is exactly one `{{...}}` keeps the JSON type of the value; inside text
--   the value is rendered as text (strings as is, numbers without trailing zeros, JSON
--   null as nothing, objects and arrays as JSON text).
-- * Filter arguments are literals: 'single' quoted strings (a quote inside as '' or \'),
--   "double" quoted JSON strings, numbers, true, false, null.
-- * Roots are checked when a workflow is published (template_errors); at run time any root
--   of the context resolves, and a missing one is a missing value.
-- * Filters: default: <literal> (when the value is missing or null), upper, lower,
--   date: '<to_char pattern>' [, '<time zone>'] (PostgreSQL to_char patterns, e.g.
--   'YYYY-MM-DD HH24:MI'; the zone defaults to context.tenant.timezone, else UTC),
--   currency [: 'EUR'] (rounded to two decimals, no thousands separator, the code as a
--   suffix: "1234.50 EUR"; numbers or numeric strings), json (JSON
--   text), length (characters of a string, elements of an array, keys of an object,
--   0 for null), add: '<duration>' (a timestamp plus a duration, computed in UTC, rendered
--   as ISO 8601 with Z), escape (the text with & < > " ' as HTML entities), raw (the value
--   as is: opts out of the automatic escaping of an email's html, see render_plan).
-- * A rendered value larger than conveyor.max_rendered_bytes() raises 54000 naming where:
--   each string's length is checked as it is built, so memory stays bounded by the limit.
-- * A path with no value and no `default` raises 22023
--   `<where>: {{<expr>}}: no value at "<path>"`: never a silent literal.

-- The largest value one template may render, and one step's whole rendered input, in bytes
-- (setting conveyor.max_rendered_bytes, default 1 MiB: 16 times the largest body an HTTP
-- action or a webhook takes in, far above any email; rendering that much takes milliseconds).
-- (plpgsql: a SQL function called from plpgsql is planned again in every transaction)
create or replace function conveyor.max_rendered_bytes() returns integer
language plpgsql
stable
parallel safe
set search_path = ''
as $$
begin
  return coalesce(nullif(pg_catalog.current_setting('conveyor.max_rendered_bytes', true), '')::integer, 1048576);
end;
$$;

-- Raises the "rendered value too large" error (declared jsonb to fit in expressions).
create or replace function conveyor.render_too_large(p_where text, p_bytes bigint, p_what text default 'value')
returns jsonb
language plpgsql
stable
parallel safe
set search_path = ''
as $$
begin
  raise exception using
    errcode = '54000',
    message = pg_catalog.format(
      '%sthe rendered %s is %s bytes or more, over the limit of %s bytes (setting conveyor.max_rendered_bytes)',
      coalesce(p_where || ': ', ''), p_what, p_bytes, conveyor.max_rendered_bytes()
    ),
    hint = 'A template that repeats a value (in a loop, say) grows it each time; render a part of it instead.';
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

-- A `{{ ... }}` expression in a string (group 1 is the expression).
create or replace function conveyor.template_pattern() returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
  select '\{\{((?:[^}]|\}(?!\}))*)\}\}';
$$;

-- The template roots allowed when a validator is given none.
create or replace function conveyor.template_default_roots() returns text[]
language sql
immutable
parallel safe
set search_path = ''
as $$
  select array['trigger', 'steps', 'vars', 'execution', 'tenant', 'now', 'item'];
$$;

-- Parses one expression (the text between `{{` and `}}`) into
-- {"path": [segments], "path_text": "a.b", "filters": [{"name": ..., "args": [literals]}]}
-- or {"error": "<what is wrong>"}. Filter names and arguments are checked by
-- template_expression_errors, not here.
create or replace function conveyor.template_parse(p_expr text) returns jsonb
language plpgsql
immutable
strict
parallel safe
set search_path = ''
as $$
declare
  -- one argument literal: 'single' (quote as '' or \'), "double" (JSON), number, true, false, null
  c_arg constant text := $re$'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.)*"|-?[0-9]+(?:\.[0-9]+)?|true|false|null$re$;
  v_m text[];
  v_path text;
  v_rest text;
  v_all_filters text;
  v_name text;
  v_args jsonb;
  v_filters jsonb := '[]'::jsonb;
  v_failed boolean := false;
begin
  -- scans filter by filter with anchored matches (plain expressions, no queries: this is on the hot path)
  if p_expr ~ '^\s*$' then
    return pg_catalog.jsonb_build_object('error', 'empty template expression');
  end if;
  v_m := pg_catalog.regexp_match(p_expr, '^\s*([^\s|]*)\s*(.*?)\s*$');
  v_path := v_m[1];
  v_rest := v_m[2];
  v_all_filters := v_rest;
  if v_path = '' then
    return pg_catalog.jsonb_build_object('error', 'missing path before "|"');
  end if;
  if v_path ~ '(^\.|\.\.|\.$)' then
    return pg_catalog.jsonb_build_object('error', pg_catalog.format('invalid path "%s" (empty segment)', v_path));
  end if;
  while v_rest <> '' loop
    v_m := pg_catalog.regexp_match(v_rest, '^\|\s*([A-Za-z_][A-Za-z0-9_]*)\s*(.*)$');
    exit when v_m is null;
    v_name := pg_catalog.lower(v_m[1]);
    v_rest := v_m[2];
    v_args := '[]'::jsonb;
    if pg_catalog.left(v_rest, 1) = ':' then
      v_rest := pg_catalog.substr(v_rest, 2);
      loop
        v_m := pg_catalog.regexp_match(v_rest, '^\s*(' || c_arg || ')\s*(.*)$');
        if v_m is null then
          v_failed := true;
          exit;
        end if;
        v_args := v_args || pg_catalog.jsonb_build_array(case
          when pg_catalog.left(v_m[1], 1) = '''' then pg_catalog.to_jsonb(pg_catalog.replace(
            pg_catalog.regexp_replace(pg_catalog.substr(v_m[1], 2, pg_catalog.length(v_m[1]) - 2), '\\(.)', '\1', 'g'),
            '''''', ''''
          ))
          else v_m[1]::jsonb
        end);
        v_rest := v_m[2];
        exit when pg_catalog.left(v_rest, 1) <> ',';
        v_rest := pg_catalog.substr(v_rest, 2);
      end loop;
      exit when v_failed;
    end if;
    v_filters := v_filters || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object('name', v_name, 'args', v_args));
  end loop;
  if v_failed or v_rest <> '' then
    return pg_catalog.jsonb_build_object(
      'error', pg_catalog.format('cannot parse "%s" (expected | filter or | filter: arg, ...)', v_all_filters)
    );
  end if;
  return pg_catalog.jsonb_build_object(
    'path', pg_catalog.to_jsonb(pg_catalog.string_to_array(v_path, '.')),
    'path_text', v_path,
    'filters', v_filters
  );
end;
$$;

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

-- Problems with one expression (without the location prefix).
create or replace function conveyor.template_expression_errors(p_expr text, p_roots text[]) returns setof text
language sql
stable
parallel safe
set search_path = ''
as $$
  with parsed as (
    select conveyor.template_parse(p_expr) as t
  )
  select p.t ->> 'error' from parsed as p where p.t ? 'error'
  union all
  select pg_catalog.format(
    'unknown template root "%s" (expected one of %s)',
    p.t #>> '{path,0}', pg_catalog.array_to_string(coalesce(p_roots, conveyor.template_default_roots()), ', ')
  )
  from parsed as p
  where p.t ? 'path' and not (p.t #>> '{path,0}') = any(coalesce(p_roots, conveyor.template_default_roots()))
  union all
  select e
  from parsed as p
  cross join lateral pg_catalog.jsonb_array_elements(p.t -> 'filters') as f
  cross join lateral (
    select
      f ->> 'name' as name,
      f -> 'args' as args,
      pg_catalog.jsonb_array_length(f -> 'args') as n
  ) as x
  cross join lateral (
    select case
      when x.name not in ('default', 'upper', 'lower', 'date', 'currency', 'json', 'length', 'add', 'escape', 'raw')
        then pg_catalog.format(
          'unknown filter "%s" (expected one of default, upper, lower, date, currency, json, length, add, escape, raw)',
          x.name
        )
      when x.name = 'default' and x.n <> 1 then 'filter "default" takes exactly one argument'
      when x.name in ('upper', 'lower', 'json', 'length', 'escape', 'raw') and x.n <> 0
        then pg_catalog.format('filter "%s" takes no arguments', x.name)
      when x.name = 'date' and (x.n not between 1 and 2 or exists (
        select 1 from pg_catalog.jsonb_array_elements(x.args) as a where pg_catalog.jsonb_typeof(a) <> 'string'
      )) then 'filter "date" takes a format string and an optional time zone string'
      when x.name = 'date' and x.n = 2 and not conveyor.timezone_is_valid(x.args ->> 1)
        then pg_catalog.format('filter "date": unknown time zone "%s"', x.args ->> 1)
      when x.name = 'currency' and (x.n > 1 or (x.n = 1 and pg_catalog.jsonb_typeof(x.args -> 0) <> 'string'))
        then 'filter "currency" takes an optional currency code string'
      when x.name = 'add' and (x.n <> 1 or pg_catalog.jsonb_typeof(x.args -> 0) <> 'string')
        then 'filter "add" takes one duration string (e.g. ''1 day'')'
      when x.name = 'add' and conveyor.duration_or_null(x.args ->> 0) is null
        then pg_catalog.format('filter "add": invalid duration "%s"', x.args ->> 0)
    end as e
  ) as checks
  where p.t ? 'filters' and checks.e is not null;
$$;

-- Every string inside a JSON value, with its location (`path.key`, `path[0]`).
create or replace function conveyor.json_strings(p_value jsonb, p_path text)
returns table (path text, value text)
language sql
immutable
parallel safe
set search_path = ''
as $$
  with recursive walk (path, v) as (
    select coalesce(p_path, ''), p_value
    union all
    select
      case
        when e.i is null and e.k ~ '^[A-Za-z_][A-Za-z0-9_]*$' then pg_catalog.ltrim(w.path || '.' || e.k, '.')
        when e.i is null then w.path || '[' || pg_catalog.to_jsonb(e.k)::text || ']'
        else w.path || '[' || (e.i - 1) || ']'
      end,
      e.v
    from walk as w
    cross join lateral (
      select o.key as k, o.value as v, null::bigint as i
      from pg_catalog.jsonb_each(case when pg_catalog.jsonb_typeof(w.v) = 'object' then w.v end) as o
      union all
      select null, a.value, a.i
      from pg_catalog.jsonb_array_elements(case when pg_catalog.jsonb_typeof(w.v) = 'array' then w.v end)
        with ordinality as a (value, i)
    ) as e
  )
  select w.path, w.v #>> '{}' from walk as w where pg_catalog.jsonb_typeof(w.v) = 'string';
$$;

-- Problems with every template in a JSON value, as `<path>: <what is wrong>`.
create or replace function conveyor.template_errors(p_value jsonb, p_path text, p_roots text[]) returns setof text
language sql
stable
parallel safe
set search_path = ''
as $$
  select s.path || ': unclosed "{{" (expected "}}")'
  from conveyor.json_strings(p_value, p_path) as s
  where pg_catalog.strpos(pg_catalog.regexp_replace(s.value, conveyor.template_pattern(), '', 'g'), '{{') > 0
  union all
  select s.path || ': ' || e
  from conveyor.json_strings(p_value, p_path) as s
  cross join lateral pg_catalog.regexp_matches(s.value, conveyor.template_pattern(), 'g') as m
  cross join lateral conveyor.template_expression_errors(m[1], p_roots) as e;
$$;

-- The step ids referenced as `steps.<id>` by the templates in a JSON value.
create or replace function conveyor.template_step_refs(p_value jsonb) returns setof text
language sql
immutable
parallel safe
set search_path = ''
as $$
  select distinct t #>> '{path,1}'
  from conveyor.json_strings(p_value, null) as s
  cross join lateral pg_catalog.regexp_matches(s.value, conveyor.template_pattern(), 'g') as m
  cross join lateral conveyor.template_parse(m[1]) as t
  where t #>> '{path,0}' = 'steps' and t #>> '{path,1}' is not null;
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

-- Renders the templates in one string (see the top of this file). p_item: the value of
-- the root `item` (see template_eval). p_escape: HTML-escape each expression's value (an
-- email's html; the literal text around the expressions stays as written), except an
-- expression that says `| raw` (the tenant vouches for it) or `| escape` (already done).
-- The text is split once at each `{{` and the output built as a list of parts whose total
-- length is checked before each one is added: linear in the text (re-slicing the rest of
-- it after each expression made a 300 KB template of 30,000 expressions take minutes), and
-- a template that doubles a string stops at conveyor.max_rendered_bytes() instead of at
-- jsonb's 256 MB.
drop function if exists conveyor.render_string(text, jsonb, text);
create or replace function conveyor.render_string(
  p_text text, p_context jsonb, p_where text default null, p_item jsonb default null, p_escape boolean default false
)
returns jsonb
language plpgsql
stable
parallel safe
set search_path = ''
as $$
declare
  -- an expression runs from a `{{` to the first `}}` after it (a `{{` inside it included):
  -- the same split as conveyor.template_pattern()
  v_chunks text[];
  v_chunk_count integer;
  v_index integer := 2;
  v_first integer;
  v_parts text[];
  v_count integer := 1;
  v_bytes bigint;
  v_max integer;
  v_close integer;
  v_expr text;
  v_value jsonb;
  v_text text;
begin
  if pg_catalog.strpos(p_text, '{{') = 0 then
    return pg_catalog.to_jsonb(p_text);
  end if;
  -- conveyor.max_rendered_bytes(), inlined: this is the hot path
  v_max := coalesce(nullif(pg_catalog.current_setting('conveyor.max_rendered_bytes', true), '')::integer, 1048576);
  -- chunk 1 is the text before the first `{{`; each other chunk starts after a `{{`
  v_chunks := pg_catalog.string_to_array(p_text, '{{');
  v_chunk_count := pg_catalog.cardinality(v_chunks);
  v_parts := array[v_chunks[1]];
  v_bytes := pg_catalog.octet_length(v_chunks[1]);
  while v_index <= v_chunk_count loop
    v_close := pg_catalog.strpos(v_chunks[v_index], '}}');
    if v_close > 0 then
      v_expr := pg_catalog.left(v_chunks[v_index], v_close - 1);
    else
      -- a `{{` inside the expression: it goes on in the next chunks
      v_first := v_index;
      while v_close = 0 loop
        v_index := v_index + 1;
        if v_index > v_chunk_count then
          raise exception using
            errcode = '22023',
            message = pg_catalog.format('%sunclosed "{{" in %s', coalesce(p_where || ': ', ''), pg_catalog.to_jsonb(p_text)),
            hint = 'Every {{ needs a matching }}.';
        end if;
        v_close := pg_catalog.strpos(v_chunks[v_index], '}}');
      end loop;
      v_expr := pg_catalog.array_to_string(v_chunks[v_first:v_index - 1], '{{') || '{{'
        || pg_catalog.left(v_chunks[v_index], v_close - 1);
    end if;
    if pg_catalog.strpos(v_expr, '|') = 0 and pg_catalog.btrim(v_expr) ~ '^[^\s.{}]+(\.[^\s.{}]+)*$'
      and pg_catalog.split_part(pg_catalog.btrim(v_expr), '.', 1) not in ('now', 'item') then
      -- template_eval's fast path, inlined: a plain path without filters (not `now` or `item`)
      v_value := p_context #> pg_catalog.string_to_array(pg_catalog.btrim(v_expr), '.');
    else
      v_value := conveyor.template_eval(v_expr, p_context, p_where, p_item);
    end if;
    if p_escape and pg_catalog.jsonb_typeof(v_value) in ('string', 'array', 'object')
      and v_expr !~ '\|\s*(raw|escape)\s*($|\|)' then
      v_value := pg_catalog.to_jsonb(conveyor.html_escape(conveyor.json_text(v_value)));
    end if;
    if v_count = 1 and v_index = v_chunk_count and v_chunks[1] = ''
      and v_close + 1 = pg_catalog.length(v_chunks[v_index]) then
      -- the whole string is one expression: keep the value's JSON type (a copy of a value
      -- of the context, measured as jsonb)
      if pg_catalog.pg_column_size(v_value) > v_max then
        return conveyor.render_too_large(p_where, pg_catalog.pg_column_size(v_value));
      end if;
      return coalesce(v_value, conveyor.template_missing(v_expr, p_where));
    end if;
    if v_value is null then
      perform conveyor.template_missing(v_expr, p_where);
    end if;
    -- conveyor.json_text, inlined: this is the hot path
    v_text := case pg_catalog.jsonb_typeof(v_value)
      when 'string' then v_value #>> '{}'
      when 'number' then pg_catalog.trim_scale((v_value #>> '{}')::numeric)::text
      when 'null' then ''
      else v_value::text
    end || pg_catalog.substr(v_chunks[v_index], v_close + 2);
    v_bytes := v_bytes + pg_catalog.octet_length(v_text);
    if v_bytes > v_max then
      return conveyor.render_too_large(p_where, v_bytes);
    end if;
    v_count := v_count + 1;
    v_parts[v_count] := v_text;
    v_index := v_index + 1;
  end loop;
  return pg_catalog.to_jsonb(pg_catalog.array_to_string(v_parts, ''));
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

-- Renders every string in any JSON value. p_where names the location for errors
-- (e.g. 'steps[2].with'); nested values extend it (`.to`, `[0]`). p_item: the value of the
-- root `item` (see template_eval). The result may not grow past conveyor.max_rendered_bytes()
-- (its size is checked after each member is rendered into it).
drop function if exists conveyor.render(jsonb, jsonb, text);
create or replace function conveyor.render(p_value jsonb, p_context jsonb, p_where text default null, p_item jsonb default null)
returns jsonb
language plpgsql
stable
parallel safe
set search_path = ''
as $$
declare
  v_result jsonb := p_value;
  v_key text;
  v_item jsonb;
  v_index integer;
  v_where text;
  v_keys jsonb;
  v_max integer;
begin
  if p_value is null or pg_catalog.strpos(p_value::text, '{{') = 0 then
    return p_value;
  end if;
  if pg_catalog.jsonb_typeof(p_value) = 'string' then
    return conveyor.render_string(p_value #>> '{}', p_context, p_where, p_item);
  end if;
  v_max := conveyor.max_rendered_bytes();
  case pg_catalog.jsonb_typeof(p_value)
    when 'object' then
      -- only members holding a template are rendered and replaced
      -- the keys come from a plain function call (no query per call: this is the hot path)
      v_keys := pg_catalog.jsonb_path_query_array(p_value, '$.keyvalue().key');
      for v_index in 0 .. pg_catalog.jsonb_array_length(v_keys) - 1 loop
        v_key := v_keys ->> v_index;
        v_item := p_value -> v_key;
        continue when pg_catalog.strpos(v_item::text, '{{') = 0;
        v_where := case
          when v_key ~ '^[A-Za-z_][A-Za-z0-9_]*$' then pg_catalog.ltrim(coalesce(p_where, '') || '.' || v_key, '.')
          else coalesce(p_where, '') || '[' || pg_catalog.to_jsonb(v_key)::text || ']'
        end;
        -- strings (the common case) go straight to render_string
        if pg_catalog.jsonb_typeof(v_item) = 'string' then
          v_item := conveyor.render_string(v_item #>> '{}', p_context, v_where, p_item);
        else
          v_item := conveyor.render(v_item, p_context, v_where, p_item);
        end if;
        v_result := pg_catalog.jsonb_set(v_result, array[v_key], coalesce(v_item, 'null'::jsonb));
        if pg_catalog.pg_column_size(v_result) > v_max then
          return conveyor.render_too_large(p_where, pg_catalog.pg_column_size(v_result));
        end if;
      end loop;
    else
      for v_index, v_item in
        select a.i - 1, a.value
        from pg_catalog.jsonb_array_elements(p_value) with ordinality as a (value, i)
        where pg_catalog.strpos(a.value::text, '{{') > 0
      loop
        v_result := pg_catalog.jsonb_set(v_result, array[v_index::text], coalesce(conveyor.render(
          v_item, p_context, coalesce(p_where, '') || '[' || v_index || ']', p_item
        ), 'null'::jsonb));
        if pg_catalog.pg_column_size(v_result) > v_max then
          return conveyor.render_too_large(p_where, pg_catalog.pg_column_size(v_result));
        end if;
      end loop;
  end case;
  return v_result;
end;
$$;

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
