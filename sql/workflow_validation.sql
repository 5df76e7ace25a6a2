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
      'max_steps', 'concurrency', 'debounce', 'throttle']
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
  -- concurrency per key, debounce, throttle (sql/flow_control.sql)
  return query select f.message from conveyor.document_flow_errors(p_settings) as f (message);
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
  v_lists jsonb;
  v_total bigint;
  v_step_ids jsonb;
  v_graph jsonb;
  v_reached jsonb;
  v_max_nesting integer := conveyor.limit_setting('max_fanout_nesting', 3)::integer;
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

  -- Every step list: the top level and the lists fan-out steps hold (a parallel's branches,
  -- a for_each's body: conveyor.document_step_lists). Step ids are unique in the whole
  -- document and templates may name any step; a route stays within its list (a nested
  -- list runs as child executions, sql/fanout.sql), so each list is checked with its own
  -- ids as the routing targets (id -> position) and the others marked -1 (not a target).
  select coalesce(jsonb_agg(to_jsonb(l) order by l.ord), '[]') into v_lists
  from conveyor.document_step_lists(p_document) as l;
  select count(*), coalesce(jsonb_object_agg(x.id, -1), '{}')
  into v_total, v_step_ids
  from (
    select e.step ->> 'id' as id
    from jsonb_array_elements(v_lists) as l (list)
    cross join lateral jsonb_array_elements(l.list -> 'steps') as e (step)
  ) as x
  where x.id is not null;
  if v_total > conveyor.max_workflow_steps() then
    return next format(
      'steps: %s steps in all step lists (branches and bodies included) exceed the limit %s'
      || ' (setting conveyor.max_workflow_steps)', v_total, conveyor.max_workflow_steps()
    );
    return;
  end if;

  -- The compiled graph of each list: {"<list path>": {id: the ids it may go to}}; each
  -- list's walk starts at its first step.
  select coalesce(jsonb_object_agg(g.list_path, g.graph), '{}') into v_graph
  from (
    select e.list_path, jsonb_object_agg(e.source, e.targets) as graph
    from (
      select c.list_path, c.step_id as source, coalesce(jsonb_agg(t.target) filter (where t.target is not null), '[]') as targets
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
      where c.step_id is not null
      group by c.list_path, c.step_id
    ) as e
    group by e.list_path
  ) as g;

  -- Each level looks its steps' targets up in v_graph; union drops ids already reached.
  with recursive reachable (list_path, step_id) as (
    select l.list ->> 'list_path', l.list -> 'steps' -> 0 ->> 'id'
    from jsonb_array_elements(v_lists) as l (list)
    union
    select r.list_path, t.target
    from reachable as r
    cross join lateral jsonb_array_elements_text(coalesce(v_graph -> r.list_path -> r.step_id, '[]')) as t (target)
  )
  select coalesce(jsonb_object_agg(r.list_path || ' ' || r.step_id, true), '{}') into v_reached
  from reachable as r
  where r.step_id is not null;

  -- Per step, list by list in document order: a duplicate id, its own problems, its
  -- fan-out nesting, unreachability.
  return query
  -- materialized: each list's scope is built once, not once per step
  with lists as materialized (
    select
      (l.list ->> 'ord')::integer as ord, l.list ->> 'list_path' as list_path, l.list -> 'steps' as steps,
      (l.list ->> 'nesting')::integer as nesting, l.list -> 'steps' -> 0 ->> 'id' as entry,
      -- the ids this list may route to, the others marked -1, and {{item}} inside a for_each body
      v_step_ids || coalesce((
        select jsonb_object_agg(o.step ->> 'id', o.n - 1 order by o.n desc)
        from jsonb_array_elements(l.list -> 'steps') with ordinality as o (step, n)
        where jsonb_typeof(o.step -> 'id') = 'string'
      ), '{}') || case when (l.list ->> 'in_item')::boolean then '{"$item": 0}'::jsonb else '{}'::jsonb end as scope
    from jsonb_array_elements(v_lists) as l (list)
  ),

  elements as (
    select
      l.ord, (e.n - 1)::integer as idx, e.step, l.list_path, format('%s[%s]', l.list_path, e.n - 1) as path,
      l.nesting, l.entry, l.scope
    from lists as l
    cross join lateral jsonb_array_elements(l.steps) with ordinality as e (step, n)
  ),

  firsts as (
    select distinct on (el.step ->> 'id') el.step ->> 'id' as id, el.ord, el.idx, el.path
    from elements as el
    where jsonb_typeof(el.step -> 'id') = 'string'
    order by el.step ->> 'id', el.ord, el.idx
  ),

  problems as (
    select el.ord, el.idx, 1 as grp, p.n, p.message
    from elements as el
    cross join lateral conveyor.document_step_errors(el.step, el.path, el.scope) with ordinality as p (message, n)
    union all
    select el.ord, el.idx, 0, 1, format('%s.id: duplicate step id "%s" (already used by %s)',
      el.path, el.step ->> 'id', f.path)
    from elements as el
    join firsts as f on f.id = el.step ->> 'id'
    where jsonb_typeof(el.step -> 'id') = 'string' and (f.ord, f.idx) <> (el.ord, el.idx)
    union all
    select el.ord, el.idx, 2, 1, format(
      '%s: fan-out nested %s deep, the limit is %s (setting conveyor.max_fanout_nesting)',
      el.path, el.nesting + 1, v_max_nesting)
    from elements as el
    where el.nesting >= v_max_nesting and exists (
      select from conveyor.step_kinds() as k where k.bodies_function is not null and el.step ? k.doc_key
    )
    union all
    select el.ord, el.idx, 3, 1, format('%s: step "%s" is unreachable from the first step "%s"',
      el.path, el.step ->> 'id', el.entry)
    from elements as el
    where jsonb_typeof(el.step) = 'object' and jsonb_typeof(el.step -> 'id') = 'string'
      and not v_reached ? (el.list_path || ' ' || (el.step ->> 'id'))
  )

  select p.message from problems as p order by p.ord, p.idx, p.grp, p.n;
end;
$$;
