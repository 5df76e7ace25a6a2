-- The parallel step: {"id", "parallel": {"branches": {"<name>": [<steps>], ...}, "join"?,
-- "timeout"?}, "next"?}: each branch runs at once as a child execution (sql/fanout.sql);
-- the step ends when its join is reached: "all" branches (the default), "any" one (the
-- others are cancelled) or {"at_least": n}. Its output: each branch's outcome and outputs
-- ({{steps.<id>.output.branches.<name>.output}}) and the counts.

create or replace function conveyor.step_parallel_errors(p_step jsonb, p_path text, p_step_ids jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_spec jsonb := p_step -> 'parallel';
  v_path text := p_path || '.parallel';
  v_branches jsonb := v_spec -> 'branches';
begin
  if jsonb_typeof(v_spec) is distinct from 'object' then
    return next format('%s: expected an object with "branches": {"<name>": [<steps>], ...}', v_path);
    return;
  end if;
  return query
  select k.message from conveyor.document_key_errors(v_spec, v_path, array['branches'], array['join', 'timeout']) as k (message);
  if v_spec ? 'branches' then
    if jsonb_typeof(v_branches) <> 'object' or v_branches = '{}' then
      return next format('%s.branches: expected an object of named branches, each a list of steps', v_path);
    else
      return query
      select case
        when b.key !~ '^[a-z0-9][a-z0-9_-]*$' then format(
          '%s.branches: invalid branch name "%s" (lowercase letters, digits, _ and -)', v_path, b.key)
        else format('%s.branches.%s: expected a non-empty array of steps', v_path, b.key)
      end
      from jsonb_each(v_branches) as b
      where b.key !~ '^[a-z0-9][a-z0-9_-]*$' or jsonb_typeof(b.value) <> 'array' or b.value = '[]'
      order by b.key;
    end if;
  end if;
  return query
  select m.message
  from (select conveyor.fanout_join_error(v_spec -> 'join', v_path || '.join',
    case when jsonb_typeof(v_branches) = 'object' then (select count(*) from jsonb_object_keys(v_branches)) end
  ) as message) as m
  where m.message is not null;
  if v_spec ? 'timeout' then
    return query
    select d.message
    from (select conveyor.document_duration_error(v_spec -> 'timeout', v_path || '.timeout') as message) as d
    where d.message is not null;
  end if;
end;
$$;

-- The step lists a parallel step holds: one per branch, by name.
create or replace function conveyor.step_parallel_bodies(p_step jsonb)
returns table (body text, path text, steps jsonb, item boolean)
language sql
immutable
set search_path = ''
as $$
  select b.key, '.parallel.branches.' || b.key, b.value, false
  from jsonb_each(
    case when jsonb_typeof(p_step -> 'parallel' -> 'branches') = 'object' then p_step -> 'parallel' -> 'branches' end
  ) as b
  order by b.key;
$$;

-- How a parallel step runs (put into the interpreter by conveyor.generate_interpreter,
-- sql/step_kinds.sql): its branches' entries become child executions.
create or replace function conveyor.step_parallel_code()
returns jsonb
language sql
immutable
parallel safe
set search_path = ''
as $$
  select pg_catalog.jsonb_build_object(
    'prepare', $code$
-- only the step's own fields are rendered here: the branches' steps render in the children
v_steps_render[v_step_pos] := conveyor.render_plan(coalesce(v_spec, '{}') - 'branches', 'step "' || v_step.step_id || '".parallel', false);
v_steps_need_ctx[v_step_pos] := coalesce((v_steps_render[v_step_pos] ->> 'context')::boolean, false);
$code$,
    'run', $code$
v_output := conveyor.fanout_begin(v_exec, v_step, v_visit, 'parallel', v_input, (
  select coalesce(jsonb_agg(jsonb_build_object('key', b.body, 'entry', b.steps -> 0 ->> 'id') order by b.body), '[]')
  from conveyor.step_parallel_bodies(jsonb_build_object('parallel', v_spec)) as b
), p_now, v_dry, v_where);
if v_output ? 'started' then
  v_wait := 'children';
  v_resume := (v_output ->> 'timeout_at')::timestamptz;
  v_spawned := v_spawned || array(select jsonb_array_elements_text(v_output -> 'started')::bigint);
end if;
$code$,
    'decision', $code$conveyor.fanout_decision_text(p_output)$code$
  );
$$;
