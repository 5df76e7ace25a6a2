-- Validation of a whole workflow document: every problem at once, in document order, as
-- "<path>: <message>" (the path names the offending field: steps[2].with.to). The parts
-- are checked where they are declared: the trigger in sql/document_triggers.sql, each step
-- by its kind (sql/step_kinds.sql, sql/steps/), the shared checks in sql/document_checks.sql.

-- Workflow settings (every key optional).
create or replace function conveyor.document_settings_errors(p_settings jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
begin
  if jsonb_typeof(p_settings) is distinct from 'object' then
    return next 'settings: expected an object';
    return;
  end if;
  return query
  select k.message
  from conveyor.document_key_errors(
    p_settings, 'settings', '{}',
    array['run_once_per_entity', 'max_executions_per_hour', 'max_concurrent', 'timeout', 'retry', 'on_error',
      'max_steps']
  ) as k (message);
  return query
  select m.message
  from (values
    (1, case when p_settings ? 'run_once_per_entity' and jsonb_typeof(p_settings -> 'run_once_per_entity') <> 'boolean'
      then 'settings.run_once_per_entity: expected true or false' end),
    (2, case when p_settings ? 'max_executions_per_hour' then
      conveyor.document_integer_error(p_settings -> 'max_executions_per_hour', 'settings.max_executions_per_hour') end),
    (3, case when p_settings ? 'max_concurrent' then
      conveyor.document_integer_error(p_settings -> 'max_concurrent', 'settings.max_concurrent') end),
    (4, case when p_settings ? 'timeout' then
      conveyor.document_duration_error(p_settings -> 'timeout', 'settings.timeout') end)
  ) as m (ord, message)
  where m.message is not null
  order by m.ord;
  if p_settings ? 'retry' then
    return query select r.message from conveyor.document_retry_errors(p_settings -> 'retry', 'settings.retry') as r (message);
  end if;
  return query
  select m.message
  from (values
    (6, case when p_settings ? 'on_error' and (p_settings -> 'on_error') not in ('"fail"', '"continue"') then
      format('settings.on_error: expected "fail" or "continue" (got %s)', (p_settings -> 'on_error')::text) end),
    (7, case when p_settings ? 'max_steps' then
      conveyor.document_integer_error(p_settings -> 'max_steps', 'settings.max_steps', 100000) end)
  ) as m (ord, message)
  where m.message is not null
  order by m.ord;
end;
$$;

-- Every problem of a workflow document, in document order, as "<path>: <message>".
-- An empty result means the document can be published.
-- A document past a limit (conveyor.document_limit_errors) gets only those problems: the
-- checks below recurse into conditions and templates and are not run on it.
-- Linear in the number of steps: step ids are a jsonb object (id -> first position), so
-- a membership test is a binary search, not a scan of every id; the graph for the
-- reachability walk is an object too (id -> targets), and a duplicate id is found by a
-- lookup. Before, each step scanned all step ids, each duplicate check all steps, and the
-- walk all edges per level: validating 500 / 2,000 / 4,000 steps took 2.3 / 4.5 / 8.3 ms
-- per step; now 1.4 / 1.6 / 1.4 ms (best of two, tests/sql/test_document_limits.py).
-- jit is off: the planner's default estimates for set-returning functions (1000 rows
-- each) push this small query over jit_above_cost, and compiling it costs ~0.6 s.
create or replace function conveyor.validate_workflow(p_document jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
set jit = off
as $$
declare
  v_steps jsonb := p_document -> 'steps';
  v_step_ids jsonb;
  v_graph jsonb;
  v_entry text;
  v_reached jsonb;
begin
  return query select l.message from conveyor.document_limit_errors(p_document) as l (message);
  if found then
    return;
  end if;

  if jsonb_typeof(p_document) is distinct from 'object' then
    return next '(document): expected a JSON object';
    return;
  end if;

  return query
  select k.message
  from conveyor.document_key_errors(
    p_document, '', array['slug', 'name', 'trigger', 'steps'],
    array['description', 'category', 'tags', 'active', 'settings']
  ) as k (message);

  return query
  select m.message
  from (values
    (1, case when p_document ? 'slug' and (jsonb_typeof(p_document -> 'slug') <> 'string'
      or (p_document ->> 'slug') !~ '^[a-z0-9][a-z0-9-]*$') then
      format('slug: invalid slug %s (lowercase letters, digits and -, starting with a letter or digit)',
        (p_document -> 'slug')::text) end),
    (2, case when p_document ? 'name' and (jsonb_typeof(p_document -> 'name') <> 'string'
      or btrim(p_document ->> 'name') = '') then 'name: expected a non-empty text' end),
    (3, case when jsonb_typeof(p_document -> 'description') not in ('string', 'null') then
      'description: expected a text' end),
    (4, case when jsonb_typeof(p_document -> 'category') not in ('string', 'null') then
      'category: expected a text' end),
    (5, case when p_document ? 'tags' and (jsonb_typeof(p_document -> 'tags') <> 'array'
      or jsonb_path_exists(p_document -> 'tags', 'lax $[*] ? (@.type() != "string")')) then
      'tags: expected an array of texts' end),
    (6, case when p_document ? 'active' and jsonb_typeof(p_document -> 'active') <> 'boolean' then
      'active: expected true or false' end)
  ) as m (ord, message)
  where m.message is not null
  order by m.ord;

  if p_document ? 'trigger' then
    return query select t.message from conveyor.document_trigger_errors(p_document -> 'trigger') as t (message);
  end if;
  if p_document ? 'settings' then
    return query select s.message from conveyor.document_settings_errors(p_document -> 'settings') as s (message);
  end if;

  if not p_document ? 'steps' then
    return;
  end if;
  if jsonb_typeof(v_steps) <> 'array' or v_steps = '[]' then
    return next 'steps: expected a non-empty array of steps';
    return;
  end if;

  -- id -> its first position (jsonb_object_agg keeps the last value of a repeated key).
  v_step_ids := coalesce((
    select jsonb_object_agg(e.step ->> 'id', e.n - 1 order by e.n desc)
    from jsonb_array_elements(v_steps) with ordinality as e (step, n)
    where jsonb_typeof(e.step -> 'id') = 'string'
  ), '{}');

  -- The compiled graph: id -> the ids it may go to; the walk starts at the first step.
  select
    coalesce(jsonb_object_agg(g.source, g.targets) filter (where g.source is not null), '{}'),
    (select c.step_id from conveyor.compile_steps(p_document) as c order by c.step_position limit 1)
  into v_graph, v_entry
  from (
    select c.step_id as source, coalesce(jsonb_agg(t.target) filter (where t.target is not null), '[]') as targets
    from conveyor.compile_steps(p_document) as c
    cross join lateral (
      select c.next_step
      -- a kind with branches goes to its next step only on error, with on_error "continue"
      where c.branches is null or c.on_error = 'continue'
      union all
      select c.error_step
      union all
      select b.value #>> '{}' from jsonb_each(coalesce(c.branches, '{}')) as b where jsonb_typeof(b.value) = 'string'
      union all
      select x.case_ ->> 'goto' from jsonb_array_elements(coalesce(c.branches -> 'cases', '[]')) as x (case_)
    ) as t (target)
    group by c.step_id
  ) as g;

  -- Each level looks its steps' targets up in v_graph; union drops ids already reached.
  with recursive reachable (step_id) as (
    select v_entry
    union
    select t.target
    from reachable as r
    cross join lateral jsonb_array_elements_text(coalesce(v_graph -> r.step_id, '[]')) as t (target)
  )
  select coalesce(jsonb_object_agg(r.step_id, true), '{}') into v_reached
  from reachable as r
  where r.step_id is not null;

  -- Per step, in document order: its own problems, a duplicate id, unreachability.
  return query
  with elements as (
    select (e.n - 1)::integer as idx, e.step
    from jsonb_array_elements(v_steps) with ordinality as e (step, n)
  ),

  problems as (
    select el.idx, 1 as grp, p.n, p.message
    from elements as el
    cross join lateral conveyor.document_step_errors(el.step, format('steps[%s]', el.idx), v_step_ids)
      with ordinality as p (message, n)
    union all
    select el.idx, 0, 1, format('steps[%s].id: duplicate step id "%s" (already used by steps[%s])',
      el.idx, el.step ->> 'id', v_step_ids ->> (el.step ->> 'id'))
    from elements as el
    where jsonb_typeof(el.step -> 'id') = 'string' and (v_step_ids ->> (el.step ->> 'id'))::integer < el.idx
    union all
    select c.step_position, 2, 1, format('steps[%s]: step "%s" is unreachable from the first step "%s"',
      c.step_position, c.step_id, v_steps -> 0 ->> 'id')
    from conveyor.compile_steps(p_document) as c
    where c.step_id is not null and not v_reached ? c.step_id
  )

  select p.message from problems as p order by p.idx, p.grp, p.n;
end;
$$;
