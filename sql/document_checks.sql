-- The checks every part of a workflow document shares: paths, keys, integers, durations,
-- time zones, timestamps, templates, conditions, step targets, variable names, retry
-- policies. Each returns "<path>: <message>" problems (or null / no rows when the value is
-- fine) and never raises: validation reports every problem at once (sql/workflow_validation.sql).

-- "<path>.<key>", or just "<key>" at the top of the document.
create or replace function conveyor.document_path(p_path text, p_key text)
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
  select case when coalesce(p_path, '') = '' then p_key else p_path || '.' || p_key end;
$$;

-- Missing required keys (in the order given), then unknown keys (alphabetical).
-- The caller has checked that p_object is an object.
create or replace function conveyor.document_key_errors(
  p_object jsonb,
  p_path text,
  p_required text[],
  p_optional text[] default '{}'
)
returns setof text
language sql
immutable
parallel safe
set search_path = ''
as $$
  select e.message
  from (
    select 1 as grp, r.ord, format('%s: required key is missing', conveyor.document_path(p_path, r.k)) as message
    from unnest(p_required) with ordinality as r (k, ord)
    where not p_object ? r.k
    union all
    select 2, row_number() over (order by k.k), format(
      '%s: unknown key (expected one of: %s)',
      conveyor.document_path(p_path, k.k), array_to_string(p_required || p_optional, ', ')
    )
    from jsonb_object_keys(p_object) as k (k)
    where k.k <> all(p_required || p_optional)
  ) as e
  order by e.grp, e.ord;
$$;

-- A positive integer (1 .. p_max), or a message.
create or replace function conveyor.document_integer_error(
  p_value jsonb,
  p_path text,
  p_max integer default 2147483647
)
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
  select case
    when jsonb_typeof(p_value) is distinct from 'number' then
      format('%s: expected an integer from 1 to %s (got %s)', p_path, p_max, coalesce(p_value::text, 'nothing'))
    when p_value::numeric = trunc(p_value::numeric) and p_value::numeric between 1 and p_max then null
    else format('%s: expected an integer from 1 to %s (got %s)', p_path, p_max, p_value::text)
  end;
$$;

-- A literal duration ("30s", "5m", "2h", "3d", "1 day 2 hours") of at most p_max (the
-- setting p_setting), or a message.
drop function if exists conveyor.document_duration_error(jsonb, text);
create or replace function conveyor.document_duration_error(
  p_value jsonb,
  p_path text,
  p_max interval default conveyor.max_duration(),
  p_setting text default 'conveyor.max_duration'
)
returns text
language sql
stable
set search_path = ''
as $$
  select case
    when jsonb_typeof(p_value) is distinct from 'string' then
      format('%s: expected a duration such as "30s", "5m", "2h" or "3d" (got %s)', p_path, p_value::text)
    when d.seconds is null then format('%s: invalid duration "%s"', p_path, p_value #>> '{}')
    when d.value is null or d.seconds > extract(epoch from p_max) then
      format('%s: duration "%s" exceeds the maximum %s (setting %s)', p_path, p_value #>> '{}',
        conveyor.duration_text(p_max), p_setting)
  end
  from conveyor.duration_parse(case when jsonb_typeof(p_value) = 'string' then p_value #>> '{}' end) as d;
$$;

-- An IANA time zone name, or a message.
create or replace function conveyor.document_timezone_error(p_value jsonb, p_path text)
returns text
language plpgsql
stable
set search_path = ''
as $$
begin
  if jsonb_typeof(p_value) is distinct from 'string' then
    return format('%s: expected a time zone name such as "Europe/Berlin" (got %s)', p_path, p_value::text);
  end if;
  perform pg_catalog.timezone(p_value #>> '{}', pg_catalog.now());
  return null;
exception
  when invalid_parameter_value or feature_not_supported then
    return format('%s: unknown time zone "%s"', p_path, p_value #>> '{}');
end;
$$;

-- A literal timestamp ("2026-12-24T09:00:00+01:00") in conveyor.until_error's range, or a
-- message.
create or replace function conveyor.document_timestamp_error(p_value jsonb, p_path text)
returns text
language sql
stable
set search_path = ''
as $$
  select case
    when jsonb_typeof(p_value) is distinct from 'string' then
      format('%s: expected a timestamp or a template (got %s)', p_path, p_value::text)
    else p_path || ': ' || conveyor.until_error(p_value #>> '{}')
  end;
$$;

-- The roots a step's templates and conditions may name: conveyor.template_default_roots,
-- where `item` exists only inside transform map templates and filter conditions, and
-- `item` and `index` in the steps of a for_each body (p_step_ids has the key "$item"
-- there, conveyor.validate_workflow).
drop function if exists conveyor.step_template_roots(boolean);
create or replace function conveyor.step_template_roots(p_item boolean, p_step_ids jsonb default '{}')
returns text[]
language sql
immutable
set search_path = ''
as $$
  select case
    when coalesce(p_step_ids ? '$item', false) then conveyor.template_default_roots() || array['index']
    when p_item then conveyor.template_default_roots()
    else pg_catalog.array_remove(conveyor.template_default_roots(), 'item')
  end;
$$;

-- Template problems in a value (any JSON; every string in it is a template), and
-- references to steps that the workflow does not have ({{steps.nope.output}}).
-- Templates in steps see the roots trigger, steps, vars, execution, tenant, now, and
-- item inside transform map templates and filter conditions.
create or replace function conveyor.document_template_errors(
  p_value jsonb,
  p_path text,
  p_step_ids jsonb,
  p_item boolean default false
)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
begin
  return query
  select t.message
  from conveyor.template_errors(p_value, p_path, conveyor.step_template_roots(p_item, p_step_ids)) as t (message);

  return query
  select format('%s: template refers to unknown step "%s"', p_path, r.step_id)
  from (select distinct s.step_id from conveyor.template_step_refs(p_value) as s (step_id)) as r
  where not p_step_ids ? r.step_id
  order by r.step_id;
end;
$$;

-- Condition problems (conveyor.condition_errors) and references to unknown steps.
create or replace function conveyor.document_condition_errors(
  p_condition jsonb,
  p_path text,
  p_step_ids jsonb,
  p_item boolean default false
)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
begin
  return query
  select c.message
  from conveyor.condition_errors(p_condition, p_path, conveyor.step_template_roots(p_item, p_step_ids)) as c (message);

  -- Step ids in templates, and in plain field paths ({"field": "steps.check.output.ok"}).
  return query
  select format('%s: refers to unknown step "%s"', p_path, r.step_id)
  from (
    select s.step_id from conveyor.template_step_refs(p_condition) as s (step_id)
    union
    select substring(f.field #>> '{}' from '^steps\.([^.]+)')
    from jsonb_path_query(p_condition, 'lax $.**.field') as f (field)
    where jsonb_typeof(f.field) = 'string' and strpos(f.field #>> '{}', '{{') = 0
  ) as r
  where not p_step_ids ? r.step_id
  order by r.step_id;
end;
$$;

-- A step target (next, then, else, goto, ...): null (end) or a step id of the same step
-- list (validate_workflow marks the other lists' ids -1).
create or replace function conveyor.document_target_error(p_value jsonb, p_path text, p_step_ids jsonb)
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
  select case
    when p_value is null or jsonb_typeof(p_value) = 'null' then null
    when jsonb_typeof(p_value) <> 'string' then
      format('%s: expected a step id or null (got %s)', p_path, p_value::text)
    when not p_step_ids ? (p_value #>> '{}') or (p_value #>> '{}') = '$item' then
      format('%s: unknown step "%s"', p_path, p_value #>> '{}')
    when p_step_ids -> (p_value #>> '{}') = '-1' then
      format('%s: step "%s" is in another step list (a route stays within its steps, branch or body)',
        p_path, p_value #>> '{}')
  end;
$$;

-- The three checks above take the step ids as the keys of a jsonb object (validate_workflow
-- maps each id to its first position): `?` on an object is a binary search, where
-- `<> all(<array>)` scanned every id. step_id_set makes such an object of an array.
-- The text[] forms below stay for callers that hold an array (document_wait_errors).
create or replace function conveyor.step_id_set(p_step_ids text[])
returns jsonb
language sql
immutable
parallel safe
set search_path = ''
as $$
  select coalesce(jsonb_object_agg(i.id, true), '{}') from unnest(p_step_ids) as i (id) where i.id is not null;
$$;

create or replace function conveyor.document_template_errors(
  p_value jsonb,
  p_path text,
  p_step_ids text[],
  p_item boolean default false
)
returns setof text
language sql
stable
set search_path = ''
as $$
  select conveyor.document_template_errors(p_value, p_path, conveyor.step_id_set(p_step_ids), p_item);
$$;

create or replace function conveyor.document_condition_errors(
  p_condition jsonb,
  p_path text,
  p_step_ids text[],
  p_item boolean default false
)
returns setof text
language sql
stable
set search_path = ''
as $$
  select conveyor.document_condition_errors(p_condition, p_path, conveyor.step_id_set(p_step_ids), p_item);
$$;

create or replace function conveyor.document_target_error(p_value jsonb, p_path text, p_step_ids text[])
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
  select conveyor.document_target_error(p_value, p_path, conveyor.step_id_set(p_step_ids));
$$;

-- A variable name (set keys, transform into).
create or replace function conveyor.document_var_error(p_name text, p_path text)
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
  select case when p_name !~ '^[a-z_][a-z0-9_]*$' then
    format('%s: invalid variable name "%s" (lowercase letters, digits and _; not starting with a digit)',
      p_path, p_name)
  end;
$$;

-- A quorum (a fan-out's join, an approval's quorum): "all", "any" or {"at_least": n}, n at
-- most p_count when that is known (p_counted names what is counted: 'branch(es)').
create or replace function conveyor.document_quorum_error(p_value jsonb, p_path text, p_count bigint, p_counted text)
returns text
language sql
immutable
set search_path = ''
as $$
  select case
    when p_value is null or p_value in ('"all"', '"any"') then null
    when jsonb_typeof(p_value) <> 'object' or not p_value ? 'at_least'
      or (select count(*) from jsonb_object_keys(p_value)) <> 1 then
      format('%s: expected "all", "any" or {"at_least": <n>} (got %s)', p_path, p_value::text)
    when jsonb_typeof(p_value -> 'at_least') <> 'number'
      or (p_value ->> 'at_least')::numeric <> floor((p_value ->> 'at_least')::numeric)
      or (p_value ->> 'at_least')::numeric < 1 then
      format('%s.at_least: expected a whole number of at least 1 (got %s)', p_path, (p_value -> 'at_least')::text)
    when p_count is not null and (p_value ->> 'at_least')::numeric > p_count then
      format('%s.at_least: %s cannot be reached with %s %s', p_path, p_value ->> 'at_least', p_count, p_counted)
  end;
$$;

-- A retry policy: {"attempts": n, "backoff": "exponential"|"fixed", "initial", "max", "jitter"}.
create or replace function conveyor.document_retry_errors(p_retry jsonb, p_path text)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
begin
  if jsonb_typeof(p_retry) is distinct from 'object' then
    return next format('%s: expected an object such as {"attempts": 3, "backoff": "exponential"}', p_path);
    return;
  end if;
  return query
  select k.message
  from conveyor.document_key_errors(p_retry, p_path, array['attempts'], array['backoff', 'initial', 'max', 'jitter'])
    as k (message);
  return query
  select m.message
  from (values
    (1, case when p_retry ? 'attempts' then
      conveyor.document_integer_error(p_retry -> 'attempts', p_path || '.attempts', 100) end),
    (2, case when p_retry ? 'backoff' and (p_retry -> 'backoff') not in ('"exponential"', '"fixed"') then
      format('%s.backoff: expected "exponential" or "fixed" (got %s)', p_path, (p_retry -> 'backoff')::text) end),
    (3, case when p_retry ? 'initial' then
      conveyor.document_duration_error(p_retry -> 'initial', p_path || '.initial') end),
    (4, case when p_retry ? 'max' then conveyor.document_duration_error(p_retry -> 'max', p_path || '.max') end),
    (5, case when p_retry ? 'jitter' and jsonb_typeof(p_retry -> 'jitter') <> 'boolean' then
      format('%s.jitter: expected true or false', p_path) end)
  ) as m (ord, message)
  where m.message is not null
  order by m.ord;
end;
$$;

-- Whether a text is a timestamp PostgreSQL reads.
create or replace function conveyor.is_timestamp(p_text text)
returns boolean
language plpgsql
stable
set search_path = ''
as $$
begin
  perform p_text::timestamptz;
  return true;
exception when others then
  return false;
end;
$$;
