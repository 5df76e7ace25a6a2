-- Event filters (MongoDB-like), evaluated against the trigger object of an event:
--   {"payload.amount": {"$gte": 100}, "payload.stage": "won", "source": {"$in": ["crm", "web"]}}
--
-- * Keys are dotted paths into the trigger (`payload.new.status`); an all-digit segment is an
--   array index (`payload.items.0`). Several keys, and several operators under one key, are ANDed.
-- * A bare scalar means $eq. Operators: $eq $ne (scalar), $gt $gte $lt $lte (number or string),
--   $in $nin (array of scalars), $contains (scalar), $exists (boolean).
-- * Values compare with jsonpath rules: numbers numerically, strings in code point order,
--   booleans with booleans, null equals only null; values of different types never match
--   (100 does not equal "100"). Where the path meets an array, any element may match
--   (`{"payload.tags": "vip"}` matches tags ["new", "vip"]). $ne and $nin also match a
--   missing field. $contains matches an equal element or a string containing the value.
--
-- compile_filter turns a filter into one jsonpath predicate, so dispatch can evaluate
-- it in C with jsonb_path_match(trigger, compiled); match_filter is exactly that.

create or replace function conveyor.filter_operators() returns text[]
language sql
immutable
parallel safe
set search_path = ''
as $$
  select array['$eq', '$ne', '$gt', '$gte', '$lt', '$lte', '$contains', '$in', '$nin', '$exists'];
$$;

-- Problems with a filter, as `<path>["<key>"].<op>: <what is wrong>` messages.
create or replace function conveyor.filter_errors(p_filter jsonb, p_path text) returns setof text
language sql
immutable
parallel safe
set search_path = ''
as $$
  select pg_catalog.format('%s: a filter must be an object of "field.path": value or {"$op": value}', p_path)
  where p_filter is not null and pg_catalog.jsonb_typeof(p_filter) <> 'object'
  union all
  select pg_catalog.format('%s[%s]: %s', p_path, pg_catalog.to_jsonb(f.key)::text, problem)
  from pg_catalog.jsonb_each(case when pg_catalog.jsonb_typeof(p_filter) = 'object' then p_filter end) as f
  cross join lateral (
    select 'invalid field path (empty segment)' as problem
    where f.key = '' or f.key ~ '(^\.|\.\.|\.$)'
    union all
    select case
      when pg_catalog.jsonb_typeof(f.value) = 'array'
        then 'a list is not a value (use {"$in": [...]} to match any of several values)'
      when f.value = '{}'::jsonb then 'an operator object needs at least one operator'
      else 'an object value must use operators only ({"$gte": 100}); objects cannot be compared'
    end
    where pg_catalog.jsonb_typeof(f.value) = 'array'
      or (pg_catalog.jsonb_typeof(f.value) = 'object' and (
        f.value = '{}'::jsonb
        or exists (select 1 from pg_catalog.jsonb_object_keys(f.value) as k where k not like '$%')
      ))
  ) as key_problems
  union all
  select pg_catalog.format('%s[%s].%s: %s', p_path, pg_catalog.to_jsonb(f.key)::text, o.key, problem)
  from pg_catalog.jsonb_each(case when pg_catalog.jsonb_typeof(p_filter) = 'object' then p_filter end) as f
  cross join lateral pg_catalog.jsonb_each(case
    when pg_catalog.jsonb_typeof(f.value) = 'object'
      and not exists (select 1 from pg_catalog.jsonb_object_keys(f.value) as k where k not like '$%')
      then f.value
  end) as o
  cross join lateral (
    select case
      when not o.key = any(conveyor.filter_operators()) then pg_catalog.format(
        'unknown filter operator "%s" (expected one of %s)', o.key, pg_catalog.array_to_string(conveyor.filter_operators(), ', ')
      )
      when o.key in ('$eq', '$ne', '$contains') and pg_catalog.jsonb_typeof(o.value) in ('object', 'array')
        then pg_catalog.format('operator "%s" needs a string, number, boolean or null', o.key)
      when o.key in ('$gt', '$gte', '$lt', '$lte') and pg_catalog.jsonb_typeof(o.value) not in ('string', 'number')
        then pg_catalog.format('operator "%s" needs a number or a string', o.key)
      when o.key in ('$in', '$nin') and (
        pg_catalog.jsonb_typeof(o.value) <> 'array'
        or exists (
          select 1 from pg_catalog.jsonb_array_elements(o.value) as e
          where pg_catalog.jsonb_typeof(e) in ('object', 'array')
        )
      ) then pg_catalog.format('operator "%s" needs an array of strings, numbers, booleans or nulls', o.key)
      when o.key = '$exists' and pg_catalog.jsonb_typeof(o.value) <> 'boolean'
        then 'operator "$exists" needs true or false'
    end as problem
  ) as op_problems
  where op_problems.problem is not null;
$$;

-- The jsonpath accessor for a dotted path: $."payload"."items"[0].
create or replace function conveyor.filter_path(p_key text) returns text
language sql
immutable
strict
parallel safe
set search_path = ''
as $$
  select '$' || pg_catalog.string_agg(
    case when s.seg ~ '^[0-9]{1,9}$' then '[' || s.seg || ']' else '.' || pg_catalog.to_jsonb(s.seg)::text end,
    '' order by s.i
  )
  from pg_catalog.string_to_table(p_key, '.') with ordinality as s (seg, i);
$$;

-- A filter as one jsonpath predicate (null for a null filter). Raises 22023 for an
-- invalid filter, listing what filter_errors finds.
create or replace function conveyor.compile_filter(p_filter jsonb) returns jsonpath
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
declare
  v_problems text;
begin
  if p_filter is null then
    return null;
  end if;
  select pg_catalog.string_agg(e, '; ') into v_problems from conveyor.filter_errors(p_filter, 'filter') as e;
  if v_problems is not null then
    raise exception using
      errcode = '22023',
      message = 'invalid filter: ' || v_problems,
      detail = pg_catalog.format('filter: %s', p_filter),
      hint = 'Filters look like {"payload.amount": {"$gte": 100}, "payload.stage": "won"}.';
  end if;
  return coalesce((
    select pg_catalog.string_agg(atom, ' && ' order by f.key, o.key)
    from pg_catalog.jsonb_each(p_filter) as f
    cross join lateral pg_catalog.jsonb_each(
      case when pg_catalog.jsonb_typeof(f.value) = 'object' then f.value else pg_catalog.jsonb_build_object('$eq', f.value) end
    ) as o
    cross join lateral (select conveyor.filter_path(f.key) as p) as path
    cross join lateral (
      select case o.key
        when '$eq' then pg_catalog.format('exists(%s ? (@ == %s))', path.p, o.value)
        when '$ne' then pg_catalog.format('!exists(%s ? (@ == %s))', path.p, o.value)
        when '$gt' then pg_catalog.format('exists(%s ? (@ > %s))', path.p, o.value)
        when '$gte' then pg_catalog.format('exists(%s ? (@ >= %s))', path.p, o.value)
        when '$lt' then pg_catalog.format('exists(%s ? (@ < %s))', path.p, o.value)
        when '$lte' then pg_catalog.format('exists(%s ? (@ <= %s))', path.p, o.value)
        when '$contains' then case
          when pg_catalog.jsonb_typeof(o.value) = 'string'
            then pg_catalog.format('exists(%s ? (@ == %s || @ like_regex %s flag "q"))', path.p, o.value, o.value)
          else pg_catalog.format('exists(%s ? (@ == %s))', path.p, o.value)
        end
        when '$in' then case
          when o.value = '[]'::jsonb then '!exists($)'
          else pg_catalog.format('exists(%s ? (%s))', path.p, (
            select pg_catalog.string_agg('@ == ' || e::text, ' || ' order by i)
            from pg_catalog.jsonb_array_elements(o.value) with ordinality as a (e, i)
          ))
        end
        when '$nin' then case
          when o.value = '[]'::jsonb then 'exists($)'
          else pg_catalog.format('!exists(%s ? (%s))', path.p, (
            select pg_catalog.string_agg('@ == ' || e::text, ' || ' order by i)
            from pg_catalog.jsonb_array_elements(o.value) with ordinality as a (e, i)
          ))
        end
        when '$exists' then case when o.value = 'true'::jsonb then 'exists(' || path.p || ')' else '!exists(' || path.p || ')' end
      end as atom
    ) as atoms
  ), 'exists($)')::jsonpath;
end;
$$;

-- Whether a trigger object passes a filter (a null filter passes everything).
create or replace function conveyor.match_filter(p_filter jsonb, p_trigger jsonb) returns boolean
language sql
immutable
parallel safe
set search_path = ''
as $$
  select p_filter is null or coalesce(pg_catalog.jsonb_path_match(p_trigger, conveyor.compile_filter(p_filter)), false);
$$;
