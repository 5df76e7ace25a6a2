-- Conditions: trees of {"all": [..]} | {"any": [..]} | {"not": node} |
-- {"field": F, "op": OP, "value": V}, evaluated against an execution's context.
--
-- * F is a dotted path into the context (`trigger.payload.amount`, `steps.fetch.output.items.0`)
--   or exactly one template (`{{trigger.payload.email | lower}}`). A missing field is JSON null,
--   never an error. For changed / changed_to / changed_from, F names a column of a table-change
--   event (`status`, or a dotted path into a JSON column), compared between
--   trigger.payload.old and trigger.payload.new.
-- * V may contain templates; it is rendered first (a missing reference in V is an error).
-- * Comparison (equals, not_equals, gt, gte, lt, lte, in, not_in, changed_to, changed_from,
--   contains on arrays): two numbers, or numeric strings ("42", "-1.5"), compare numerically;
--   two ISO 8601 strings (dates or timestamps; no offset means UTC) compare chronologically;
--   two other strings compare as text in code point order; equals on anything else is JSON
--   equality, and an order between anything else is false.
-- * contains: substring of a string (the value rendered as text), an element of an array,
--   a key of an object. starts_with / ends_with / matches (POSIX regex) work on the text of
--   strings, numbers and booleans (false for null, arrays, objects).
-- * matches is bounded (sql/regex.sql, conveyor.regex_refusal): a pattern has no back-references or
--   lookaround and at most conveyor.max_regex_pattern() characters, the text at most
--   conveyor.max_regex_subject(); PostgreSQL's engine then matches in time linear in the text.
-- * is_empty: null, missing, "", [] and {}. before / after compare timestamps (false if either
--   is not one); within_last / within_next take a duration ('7 days') relative to context.now
--   (or now()).

-- A JSON number, or a string holding a plain decimal number ("42", " -1.5 "), as numeric.
-- The spaces around it are the ASCII ones numeric input skips (\s would also take Unicode
-- spaces, which the cast then refuses: a condition error on a payload string).
create or replace function conveyor.json_number(p_value jsonb) returns numeric
language sql
immutable
strict
parallel safe
set search_path = ''
as $$
  select case
    when pg_catalog.jsonb_typeof(p_value) = 'number' then (p_value #>> '{}')::numeric
    when pg_catalog.jsonb_typeof(p_value) = 'string' and (p_value #>> '{}') ~ '^[ \t\n\r\f\v]*-?[0-9]+(\.[0-9]+)?[ \t\n\r\f\v]*$'
      then (p_value #>> '{}')::numeric
  end;
$$;

-- The text of a scalar for string operators: strings as is, numbers without trailing
-- zeros, booleans; null for JSON null, arrays and objects.
create or replace function conveyor.json_scalar_text(p_value jsonb) returns text
language sql
immutable
strict
parallel safe
set search_path = ''
as $$
  select case pg_catalog.jsonb_typeof(p_value)
    when 'string' then p_value #>> '{}'
    when 'number' then pg_catalog.trim_scale((p_value #>> '{}')::numeric)::text
    when 'boolean' then p_value #>> '{}'
  end;
$$;

-- Orders two JSON values (-1, 0, 1), or null when they are not comparable (see above).
create or replace function conveyor.json_compare(p_left jsonb, p_right jsonb) returns integer
language plpgsql
stable
parallel safe
set search_path = ''
as $$
declare
  -- conveyor.json_number, inlined: this is the hot path of every comparison
  v_left_number numeric := case
    when pg_catalog.jsonb_typeof(p_left) = 'number' then (p_left #>> '{}')::numeric
    when pg_catalog.jsonb_typeof(p_left) = 'string' and (p_left #>> '{}') ~ '^[ \t\n\r\f\v]*-?[0-9]+(\.[0-9]+)?[ \t\n\r\f\v]*$'
      then (p_left #>> '{}')::numeric
  end;
  v_right_number numeric := case
    when pg_catalog.jsonb_typeof(p_right) = 'number' then (p_right #>> '{}')::numeric
    when pg_catalog.jsonb_typeof(p_right) = 'string' and (p_right #>> '{}') ~ '^[ \t\n\r\f\v]*-?[0-9]+(\.[0-9]+)?[ \t\n\r\f\v]*$'
      then (p_right #>> '{}')::numeric
  end;
  v_left_ts timestamp;
  v_right_ts timestamp;
begin
  if v_left_number is not null and v_right_number is not null then
    return pg_catalog.sign(v_left_number - v_right_number)::integer;
  end if;
  if pg_catalog.jsonb_typeof(p_left) is distinct from 'string' or pg_catalog.jsonb_typeof(p_right) is distinct from 'string' then
    return null;
  end if;
  v_left_ts := conveyor.json_timestamp(p_left);
  v_right_ts := conveyor.json_timestamp(p_right);
  if v_left_ts is not null and v_right_ts is not null then
    return case when v_left_ts < v_right_ts then -1 when v_left_ts > v_right_ts then 1 else 0 end;
  end if;
  return case
    when (p_left #>> '{}') < (p_right #>> '{}') collate pg_catalog."C" then -1
    when (p_left #>> '{}') > (p_right #>> '{}') collate pg_catalog."C" then 1
    else 0
  end;
end;
$$;

-- Equality as conditions use it: json_compare where comparable, else JSON equality.
-- (plpgsql rather than sql: a SQL function called from plpgsql is parsed and planned
-- again in every transaction; this one runs for every equals condition)
create or replace function conveyor.json_equals(p_left jsonb, p_right jsonb) returns boolean
language plpgsql
stable
parallel safe
set search_path = ''
as $$
begin
  -- Equal JSON values compare equal, and two numbers compare as JSON does (200 = 200.0):
  -- the common cases answered without json_compare's call.
  if p_left = p_right then
    return true;
  end if;
  if pg_catalog.jsonb_typeof(p_left) = 'number' and pg_catalog.jsonb_typeof(p_right) = 'number' then
    return false;
  end if;
  return coalesce(conveyor.json_compare(p_left, p_right) = 0, false);
end;
$$;

-- The operators a leaf may use, and those that need no value.
create or replace function conveyor.condition_operators() returns text[]
language sql
immutable
parallel safe
set search_path = ''
as $$
  select array[
    'equals', 'not_equals', 'gt', 'gte', 'lt', 'lte', 'contains', 'not_contains', 'starts_with',
    'ends_with', 'matches', 'in', 'not_in', 'is_empty', 'is_not_empty', 'is_null', 'is_not_null',
    'changed', 'changed_to', 'changed_from', 'before', 'after', 'within_last', 'within_next'
  ];
$$;

create or replace function conveyor.condition_unary_operators() returns text[]
language sql
immutable
parallel safe
set search_path = ''
as $$
  select array['is_empty', 'is_not_empty', 'is_null', 'is_not_null', 'changed'];
$$;

-- A leaf's operator applied to the field's value and the condition's value (every
-- operator but the change and time-window ones, which read the context): what
-- eval_condition_leaf returns once it has both values, and what the interpreter calls
-- directly for a condition it planned (conveyor.condition_plan). p_field, when given, is
-- the leaf's field, for errors.
drop function if exists conveyor.condition_compare(text, jsonb, jsonb);
create or replace function conveyor.condition_compare(p_op text, p_left jsonb, p_right jsonb, p_field text default null)
returns boolean
language plpgsql
stable
parallel safe
set search_path = ''
as $$
declare
  v_text text;
begin
  case p_op
    when 'equals' then
      return conveyor.json_equals(p_left, p_right);
    when 'not_equals' then
      return not conveyor.json_equals(p_left, p_right);
    when 'gt' then
      return coalesce(conveyor.json_compare(p_left, p_right) > 0, false);
    when 'gte' then
      return coalesce(conveyor.json_compare(p_left, p_right) >= 0, false);
    when 'lt' then
      return coalesce(conveyor.json_compare(p_left, p_right) < 0, false);
    when 'lte' then
      return coalesce(conveyor.json_compare(p_left, p_right) <= 0, false);
    when 'contains', 'not_contains' then
      return (p_op = 'not_contains') <> coalesce(case pg_catalog.jsonb_typeof(p_left)
        when 'string' then pg_catalog.strpos(p_left #>> '{}', conveyor.json_scalar_text(p_right)) > 0
        when 'array' then exists (
          select 1 from pg_catalog.jsonb_array_elements(p_left) as e where conveyor.json_equals(e, p_right)
        )
        when 'object' then pg_catalog.jsonb_typeof(p_right) = 'string' and p_left ? (p_right #>> '{}')
      end, false);
    when 'starts_with' then
      return coalesce(pg_catalog.starts_with(conveyor.json_scalar_text(p_left), conveyor.json_scalar_text(p_right)), false);
    when 'ends_with' then
      return coalesce(
        pg_catalog.right(conveyor.json_scalar_text(p_left), pg_catalog.length(conveyor.json_scalar_text(p_right)))
        = conveyor.json_scalar_text(p_right)
        and pg_catalog.length(conveyor.json_scalar_text(p_left)) >= pg_catalog.length(conveyor.json_scalar_text(p_right)),
        false
      );
    when 'matches' then
      if pg_catalog.jsonb_typeof(p_right) is distinct from 'string' then
        raise exception using errcode = '22023',
          message = pg_catalog.format('condition.value: operator "matches" needs a regular expression string, got %s', p_right);
      end if;
      -- bounded (see conveyor.regex_refusal): a literal pattern was checked in full at
      -- publish, and one from a template by eval_condition_leaf once rendered; the cheap
      -- checks run here for every pattern (one published before them, too)
      if conveyor.regex_refusal(p_right #>> '{}', false) is not null then
        perform conveyor.regex_check(p_right #>> '{}', false);
      end if;
      v_text := conveyor.json_scalar_text(p_left);
      -- conveyor.max_regex_subject(), inlined: this runs for every `matches`
      if pg_catalog.length(v_text)
        > coalesce(nullif(pg_catalog.current_setting('conveyor.max_regex_subject', true), '')::integer, 10000) then
        raise exception using errcode = '54000',
          message = pg_catalog.format(
            'condition.field%s: operator "matches": the text is %s characters, over the limit of %s '
            || '(setting conveyor.max_regex_subject)',
            coalesce(' ' || pg_catalog.to_jsonb(p_field)::text, ''), pg_catalog.length(v_text), conveyor.max_regex_subject()
          ),
          hint = 'Match a shorter part of the value (a field of it, or | default / a transform first).';
      end if;
      return coalesce(v_text ~ (p_right #>> '{}'), false);
    when 'in', 'not_in' then
      if pg_catalog.jsonb_typeof(p_right) is distinct from 'array' then
        raise exception using errcode = '22023',
          message = pg_catalog.format('condition.value: operator "%s" needs an array, got %s', p_op, p_right);
      end if;
      return (p_op = 'not_in') <> exists (
        select 1 from pg_catalog.jsonb_array_elements(p_right) as e where conveyor.json_equals(p_left, e)
      );
    when 'is_empty', 'is_not_empty' then
      return (p_op = 'is_not_empty') <> (p_left in ('null'::jsonb, '""'::jsonb, '[]'::jsonb, '{}'::jsonb));
    when 'is_null' then
      return p_left = 'null'::jsonb;
    when 'is_not_null' then
      return p_left <> 'null'::jsonb;
    when 'before' then
      return coalesce(conveyor.json_timestamp(p_left) < conveyor.json_timestamp(p_right), false);
    when 'after' then
      return coalesce(conveyor.json_timestamp(p_left) > conveyor.json_timestamp(p_right), false);
    else
      raise exception using errcode = '22023',
        message = pg_catalog.format('condition.op: unknown operator %s', pg_catalog.to_jsonb(p_op));
  end case;
end;
$$;

-- Evaluates one leaf {"field", "op", "value"}. p_item: the value of the root `item`
-- (conveyor.template_eval), for a filter transform's elements.
drop function if exists conveyor.eval_condition_leaf(jsonb, jsonb);
create or replace function conveyor.eval_condition_leaf(p_condition jsonb, p_context jsonb, p_item jsonb default null)
returns boolean
language plpgsql
stable
parallel safe
set search_path = ''
as $$
declare
  v_op text := p_condition ->> 'op';
  v_field text := p_condition ->> 'field';
  v_whole text[];
  v_left jsonb;
  v_right jsonb;
  v_old jsonb;
  v_new jsonb;
  v_now timestamp;
  v_duration interval;
  v_ts timestamp;
begin
  if v_op is null or not v_op = any(array[
    'equals', 'not_equals', 'gt', 'gte', 'lt', 'lte', 'contains', 'not_contains', 'starts_with',
    'ends_with', 'matches', 'in', 'not_in', 'is_empty', 'is_not_empty', 'is_null', 'is_not_null',
    'changed', 'changed_to', 'changed_from', 'before', 'after', 'within_last', 'within_next'
  ]) then  -- conveyor.condition_operators(), inlined: this is the hot path
    raise exception using
      errcode = '22023',
      message = pg_catalog.format('condition.op: unknown operator %s', coalesce(p_condition -> 'op', 'null')),
      detail = pg_catalog.format('condition: %s', p_condition),
      hint = 'Operators: ' || pg_catalog.array_to_string(conveyor.condition_operators(), ', ');
  end if;
  if pg_catalog.jsonb_typeof(p_condition -> 'field') is distinct from 'string' then
    raise exception using
      errcode = '22023',
      message = 'condition.field: required (a dotted path or one {{template}})',
      detail = pg_catalog.format('condition: %s', p_condition);
  end if;
  v_right := p_condition -> 'value';
  if pg_catalog.strpos(v_right::text, '{{') > 0 then
    v_right := conveyor.render(v_right, p_context, 'condition.value', p_item);
    if v_op = 'matches' and pg_catalog.jsonb_typeof(v_right) = 'string' then
      perform conveyor.regex_check(v_right #>> '{}', true);
    end if;
  end if;
  v_right := coalesce(v_right, 'null'::jsonb);

  if v_op in ('changed', 'changed_to', 'changed_from') then
    v_old := p_context #> (array['trigger', 'payload', 'old'] || pg_catalog.string_to_array(v_field, '.'));
    v_new := p_context #> (array['trigger', 'payload', 'new'] || pg_catalog.string_to_array(v_field, '.'));
    if pg_catalog.jsonb_typeof(p_context #> '{trigger,payload,old}') is distinct from 'object'
      or pg_catalog.jsonb_typeof(p_context #> '{trigger,payload,new}') is distinct from 'object'
      or v_old is not distinct from v_new then
      return false;
    end if;
    return case v_op
      when 'changed' then true
      when 'changed_to' then conveyor.json_equals(coalesce(v_new, 'null'), v_right)
      else conveyor.json_equals(coalesce(v_old, 'null'), v_right)
    end;
  end if;

  if pg_catalog.strpos(v_field, '{{') > 0 then
    v_whole := pg_catalog.regexp_match(v_field, '^\{\{((?:[^}]|\}(?!\}))*)\}\}$');  -- conveyor.template_pattern()
  end if;
  v_left := coalesce(
    case
      when v_whole is not null then conveyor.template_eval(v_whole[1], p_context, 'condition.field', p_item)
      when p_item is not null and pg_catalog.split_part(v_field, '.', 1) = 'item'
        then p_item #> (pg_catalog.string_to_array(v_field, '.'))[2:]
      when pg_catalog.split_part(v_field, '.', 1) = 'now' and not p_context ? 'now'
        then conveyor.context_value(p_context, pg_catalog.string_to_array(v_field, '.'))
      else p_context #> pg_catalog.string_to_array(v_field, '.')
    end,
    'null'::jsonb
  );

  if v_op in ('within_last', 'within_next') then
    v_duration := conveyor.duration_or_null(conveyor.json_scalar_text(v_right));
    if v_duration is null then
      raise exception using errcode = '22023',
        message = pg_catalog.format('condition.value: operator "%s" needs a duration such as "7 days", got %s', v_op, v_right);
    end if;
    v_now := coalesce(
      conveyor.json_timestamp(p_context -> 'now'), pg_catalog.timezone('UTC', pg_catalog.now())
    );
    v_ts := conveyor.json_timestamp(v_left);
    if v_op = 'within_last' then
      return coalesce(v_ts between v_now - v_duration and v_now, false);
    end if;
    return coalesce(v_ts between v_now and v_now + v_duration, false);
  end if;
  return conveyor.condition_compare(v_op, v_left, v_right, v_field);
end;
$$;

-- A plan for a condition that is a single leaf reading nothing but its field, a plain
-- path from trigger, steps or vars (no template in the field or the value, not a change
-- operator, which reads the event's old and new rows, nor a time window, which reads the
-- context's now): {"root", "rest" (the path after the root, a text[] literal), "op",
-- "value"}. The interpreter then applies condition_compare to the value at rest in that
-- root of the execution, instead of evaluating the leaf against a whole context object.
-- Null for every other condition (and for a malformed leaf: evaluating it raises).
create or replace function conveyor.condition_plan(p_condition jsonb) returns jsonb
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
declare
  v_path text[] := pg_catalog.string_to_array(p_condition ->> 'field', '.');
begin
  if pg_catalog.jsonb_typeof(p_condition) is distinct from 'object'
    or p_condition ?| array['all', 'any', 'not']
    or pg_catalog.jsonb_typeof(p_condition -> 'field') is distinct from 'string'
    or not coalesce(p_condition ->> 'op', '') = any(conveyor.condition_operators())
    or p_condition ->> 'op' in ('changed', 'changed_to', 'changed_from', 'within_last', 'within_next')
    or pg_catalog.strpos(p_condition ->> 'field', '{{') > 0
    or pg_catalog.strpos(coalesce((p_condition -> 'value')::text, ''), '{{') > 0
    or v_path[1] not in ('trigger', 'steps', 'vars')
  then
    return null;
  end if;
  return pg_catalog.jsonb_build_object(
    'root', v_path[1],
    'rest', v_path[2:pg_catalog.cardinality(v_path)]::text,
    'op', p_condition ->> 'op',
    'value', coalesce(p_condition -> 'value', 'null'::jsonb)
  );
end;
$$;

-- Evaluates a condition tree against a context. An empty "all" is true, an empty "any"
-- false. Raises 22023 for a malformed node. p_item: as for eval_condition_leaf.
drop function if exists conveyor.eval_condition(jsonb, jsonb);
create or replace function conveyor.eval_condition(p_condition jsonb, p_context jsonb, p_item jsonb default null)
returns boolean
language plpgsql
stable
parallel safe
set search_path = ''
as $$
begin
  if pg_catalog.jsonb_typeof(p_condition) is distinct from 'object' then
    raise exception using
      errcode = '22023',
      message = pg_catalog.format('condition: expected an object with "all", "any", "not" or "field", got %s', p_condition);
  end if;
  if p_condition ? 'all' then
    if pg_catalog.jsonb_typeof(p_condition -> 'all') <> 'array' then
      raise exception using errcode = '22023', message = 'condition.all: must be an array of conditions';
    end if;
    return coalesce((
      select pg_catalog.bool_and(conveyor.eval_condition(e, p_context, p_item))
      from pg_catalog.jsonb_array_elements(p_condition -> 'all') as e
    ), true);
  elsif p_condition ? 'any' then
    if pg_catalog.jsonb_typeof(p_condition -> 'any') <> 'array' then
      raise exception using errcode = '22023', message = 'condition.any: must be an array of conditions';
    end if;
    return coalesce((
      select pg_catalog.bool_or(conveyor.eval_condition(e, p_context, p_item))
      from pg_catalog.jsonb_array_elements(p_condition -> 'any') as e
    ), false);
  elsif p_condition ? 'not' then
    return not conveyor.eval_condition(p_condition -> 'not', p_context, p_item);
  end if;
  return conveyor.eval_condition_leaf(p_condition, p_context, p_item);
end;
$$;

-- Problems with a condition tree, as `<path>: <what is wrong>` messages. p_roots are the
-- template and field roots the condition may use (null: the default template roots).
create or replace function conveyor.condition_errors(p_condition jsonb, p_path text, p_roots text[]) returns setof text
language plpgsql
stable
parallel safe
set search_path = ''
as $$
declare
  v_roots text[] := coalesce(p_roots, conveyor.template_default_roots());
  v_op text := p_condition ->> 'op';
  v_field jsonb := p_condition -> 'field';
  v_value jsonb := p_condition -> 'value';
  v_whole text[];
  v_branch text;
  v_templated boolean := pg_catalog.strpos(coalesce((p_condition -> 'value')::text, ''), '{{') > 0;
begin
  if pg_catalog.jsonb_typeof(p_condition) is distinct from 'object' then
    return next pg_catalog.format('%s: a condition must be an object with "all", "any", "not" or "field" and "op"', p_path);
    return;
  end if;
  foreach v_branch in array array['all', 'any'] loop
    if p_condition ? v_branch then
      if (select pg_catalog.count(*) from pg_catalog.jsonb_object_keys(p_condition)) > 1 then
        return next pg_catalog.format('%s: "%s" must be the only key of its node', p_path, v_branch);
      end if;
      if pg_catalog.jsonb_typeof(p_condition -> v_branch) <> 'array' then
        return next pg_catalog.format('%s.%s: must be an array of conditions', p_path, v_branch);
        return;
      end if;
      return query
      select e
      from pg_catalog.jsonb_array_elements(p_condition -> v_branch) with ordinality as c (node, i)
      cross join lateral conveyor.condition_errors(c.node, pg_catalog.format('%s.%s[%s]', p_path, v_branch, c.i - 1), p_roots) as e;
      return;
    end if;
  end loop;
  if p_condition ? 'not' then
    if (select pg_catalog.count(*) from pg_catalog.jsonb_object_keys(p_condition)) > 1 then
      return next pg_catalog.format('%s: "not" must be the only key of its node', p_path);
    end if;
    return query select conveyor.condition_errors(p_condition -> 'not', p_path || '.not', p_roots);
    return;
  end if;

  return query
  select pg_catalog.format('%s.%s: unknown key (expected field, op, value)', p_path, k)
  from pg_catalog.jsonb_object_keys(p_condition) as k
  where k not in ('field', 'op', 'value');

  if v_op is null then
    return next pg_catalog.format('%s.op: required (one of %s)', p_path, pg_catalog.array_to_string(conveyor.condition_operators(), ', '));
    return;
  end if;
  if not v_op = any(conveyor.condition_operators()) then
    return next pg_catalog.format(
      '%s.op: unknown operator %s (expected one of %s)',
      p_path, p_condition -> 'op', pg_catalog.array_to_string(conveyor.condition_operators(), ', ')
    );
    return;
  end if;

  if v_field is null or pg_catalog.jsonb_typeof(v_field) <> 'string' or v_field #>> '{}' = '' then
    return next pg_catalog.format('%s.field: required (a dotted path such as "trigger.payload.amount" or one {{template}})', p_path);
  elsif v_op in ('changed', 'changed_to', 'changed_from') then
    if (v_field #>> '{}') !~ '^[^.{}\s]+(\.[^.{}\s]+)*$' then
      return next pg_catalog.format('%s.field: operator "%s" needs a column name (e.g. "status"), got %s', p_path, v_op, v_field);
    end if;
  elsif pg_catalog.strpos(v_field #>> '{}', '{{') > 0 then
    v_whole := pg_catalog.regexp_match(v_field #>> '{}', '^' || conveyor.template_pattern() || '$');
    if v_whole is null then
      return next pg_catalog.format('%s.field: must be a dotted path or exactly one {{template}}', p_path);
    else
      return query select conveyor.template_errors(v_field, p_path || '.field', v_roots);
    end if;
  elsif (v_field #>> '{}') !~ '^[^.\s]+(\.[^.\s]+)*$' then
    return next pg_catalog.format('%s.field: invalid path %s (empty segment or spaces)', p_path, v_field);
  elsif not pg_catalog.split_part(v_field #>> '{}', '.', 1) = any(v_roots) then
    return next pg_catalog.format(
      '%s.field: unknown root "%s" (expected one of %s)',
      p_path, pg_catalog.split_part(v_field #>> '{}', '.', 1), pg_catalog.array_to_string(v_roots, ', ')
    );
  end if;

  if v_value is null then
    if not v_op = any(conveyor.condition_unary_operators()) then
      return next pg_catalog.format('%s.value: required for operator "%s"', p_path, v_op);
    end if;
    return;
  end if;
  return query select conveyor.template_errors(v_value, p_path || '.value', v_roots);
  if v_templated and pg_catalog.jsonb_typeof(v_value) = 'string'
    and pg_catalog.regexp_match(v_value #>> '{}', '^' || conveyor.template_pattern() || '$') is not null then
    return;  -- a whole-value template: its type is known only at run time
  end if;
  if v_op in ('in', 'not_in') and pg_catalog.jsonb_typeof(v_value) <> 'array' then
    return next pg_catalog.format('%s.value: operator "%s" needs an array, got %s', p_path, v_op, v_value);
  elsif v_op in ('within_last', 'within_next') and not v_templated
    and conveyor.duration_or_null(conveyor.json_scalar_text(v_value)) is null then
    return next pg_catalog.format('%s.value: operator "%s" needs a duration such as "7 days", got %s', p_path, v_op, v_value);
  elsif v_op = 'matches' and pg_catalog.jsonb_typeof(v_value) <> 'string' then
    return next pg_catalog.format('%s.value: operator "matches" needs a regular expression string, got %s', p_path, v_value);
  elsif v_op = 'matches' and not v_templated and conveyor.regex_refusal(v_value #>> '{}') is not null then
    return next pg_catalog.format(
      '%s.value: regular expression %s refused: %s',
      p_path, conveyor.regex_shown(v_value #>> '{}'), conveyor.regex_refusal(v_value #>> '{}')
    );
  elsif v_op = 'matches' and not v_templated and conveyor.regex_error(v_value #>> '{}') is not null then
    return next pg_catalog.format(
      '%s.value: invalid regular expression %s (%s)', p_path, v_value, conveyor.regex_error(v_value #>> '{}')
    );
  elsif v_op in ('before', 'after') and not v_templated and conveyor.json_timestamp(v_value) is null then
    return next pg_catalog.format('%s.value: operator "%s" needs an ISO 8601 timestamp or a {{template}}, got %s', p_path, v_op, v_value);
  end if;
end;
$$;

-- The step ids a condition tree refers to: plain field paths `steps.<id>...` and
-- `{{steps.<id>...}}` templates in fields and values (for publish-time checks).
create or replace function conveyor.condition_step_refs(p_condition jsonb) returns setof text
language plpgsql
stable
parallel safe
set search_path = ''
as $$
begin
  return query
  with recursive nodes (node) as (
    select p_condition
    union all
    select child.node
    from nodes as n
    cross join lateral (
      select e as node
      from pg_catalog.jsonb_array_elements(case
        when pg_catalog.jsonb_typeof(n.node -> 'all') = 'array' then n.node -> 'all'
        when pg_catalog.jsonb_typeof(n.node -> 'any') = 'array' then n.node -> 'any'
      end) as e
      union all
      select n.node -> 'not' where pg_catalog.jsonb_typeof(n.node) = 'object' and n.node ? 'not'
    ) as child
  )
  select pg_catalog.split_part(n.node ->> 'field', '.', 2)
  from nodes as n
  where pg_catalog.jsonb_typeof(n.node) = 'object'
    and pg_catalog.jsonb_typeof(n.node -> 'field') = 'string'
    and (n.node ->> 'field') like 'steps.%'
    and pg_catalog.split_part(n.node ->> 'field', '.', 2) <> ''
    and coalesce(n.node ->> 'op', '') not in ('changed', 'changed_to', 'changed_from')
  union
  select r from conveyor.template_step_refs(p_condition) as r;
end;
$$;
