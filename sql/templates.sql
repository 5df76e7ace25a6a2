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
--
-- The files: this one parses expressions and checks a document's templates when it is
-- published; template_eval.sql evaluates one expression (its path and filters);
-- template_render.sql renders strings and JSON values (and bounds their size);
-- template_plans.sql plans a step's rendering once per batch (the interpreter's path).

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
