-- The split step: {"id", "split": [{"weight": <positive number>, "goto": <step id | null>,
-- "name"?}, ...]}: one weighted branch, chosen by a stable hash of the workflow, the step
-- and the execution's subject (its entity, else its trigger event, else the first
-- execution of its retry chain), so a retry or a re-run for the same entity takes the
-- same branch. The step's output records the choice, for counting A/B results.

-- A branch's name: its own, else its goto target, else "end" (a goto null).
create or replace function conveyor.split_branch_name(p_branch jsonb)
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
  select coalesce(p_branch ->> 'name', p_branch ->> 'goto', 'end');
$$;

create or replace function conveyor.step_split_errors(p_step jsonb, p_path text, p_step_ids jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_split jsonb := p_step -> 'split';
  v_branch record;
  v_path text;
  v_name text;
  -- name -> the index of the first branch that has it
  v_names jsonb := '{}';
begin
  if jsonb_typeof(v_split) is distinct from 'array' or v_split = '[]' then
    return next format(
      '%s.split: expected a non-empty array of {"weight": <positive number>, "goto": <step id or null>, "name"?}',
      p_path
    );
    return;
  end if;
  -- a publish-time walk over a short list: each branch's problems in order
  for v_branch in select (e.n - 1)::integer as idx, e.b from jsonb_array_elements(v_split) with ordinality as e (b, n)
  loop
    v_path := format('%s.split[%s]', p_path, v_branch.idx);
    if jsonb_typeof(v_branch.b) <> 'object' then
      return next format('%s: expected an object with "weight" and "goto" (got %s)', v_path, v_branch.b::text);
      continue;
    end if;
    return query
    select k.message from conveyor.document_key_errors(v_branch.b, v_path, array['weight', 'goto'], array['name'])
      as k (message);
    if v_branch.b ? 'weight' and (
      jsonb_typeof(v_branch.b -> 'weight') <> 'number' or (v_branch.b ->> 'weight')::numeric <= 0
    ) then
      return next format('%s.weight: expected a positive number such as 50 or 12.5 (got %s)', v_path,
        (v_branch.b -> 'weight')::text);
    end if;
    if v_branch.b ? 'goto' then
      return query
      select t.message
      from (select conveyor.document_target_error(v_branch.b -> 'goto', v_path || '.goto', p_step_ids) as message) as t
      where t.message is not null;
    end if;
    if v_branch.b ? 'name' and (
      jsonb_typeof(v_branch.b -> 'name') <> 'string' or (v_branch.b ->> 'name') !~ '^[a-z0-9][a-z0-9_-]*$'
    ) then
      return next format(
        '%s.name: invalid branch name %s (lowercase letters, digits, _ and -, starting with a letter or digit)',
        v_path, (v_branch.b -> 'name')::text
      );
      continue;
    end if;
    v_name := conveyor.split_branch_name(v_branch.b);
    if v_names ? v_name then
      return next format(
        '%s: duplicate branch name "%s" (split[%s] has it already)%s', v_path || case
          when v_branch.b ? 'name' then '.name' else '' end,
        v_name, v_names ->> v_name,
        case when v_branch.b ? 'name' then '' else '; a branch without "name" is named by its goto: give it a "name"' end
      );
    else
      v_names := v_names || jsonb_build_object(v_name, v_branch.idx);
    end if;
  end loop;
end;
$$;

-- What compiling adds for a split: each branch's route, {"split[<i>]": <goto>}, so the
-- compiled graph (reachability, inspection) names every target a split may take.
create or replace function conveyor.step_split_compiled(p_step jsonb, p_fall_through text)
returns jsonb
language sql
immutable
parallel safe
set search_path = ''
as $$
  select pg_catalog.jsonb_build_object('branches', coalesce((
    select pg_catalog.jsonb_object_agg(pg_catalog.format('split[%s]', e.n - 1), e.b -> 'goto')
    from pg_catalog.jsonb_array_elements(
      case when pg_catalog.jsonb_typeof(p_step -> 'split') = 'array' then p_step -> 'split' else '[]' end
    ) with ordinality as e (b, n)
  ), '{}'));
$$;

-- What a split hashes for an execution: its entity, else its trigger event, else the first
-- execution of its retry chain (conveyor.retry_execution starts a new execution that names
-- the one it retries), so a retry takes the branch its original took.
create or replace function conveyor.split_subject(
  p_entity_type text,
  p_entity_id text,
  p_event_id bigint,
  p_execution_id bigint,
  p_retry_of bigint
)
returns text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_root bigint := p_execution_id;
begin
  if p_entity_id is not null then
    return 'entity:' || coalesce(p_entity_type, '') || ':' || p_entity_id;
  elsif p_event_id is not null then
    return 'event:' || p_event_id;
  end if;
  if p_retry_of is not null then
    with recursive chain (execution_id, retry_of) as (
      select e.execution_id, e.retry_of from conveyor.executions as e where e.execution_id = p_retry_of
      union all
      select e.execution_id, e.retry_of
      from chain as c
      join conveyor.executions as e on e.execution_id = c.retry_of
    )
    -- (retention may have deleted the chain's start: the oldest one left stands for it)
    select min(c.execution_id) into v_root from chain as c;
    v_root := coalesce(v_root, p_retry_of);
  end if;
  return 'execution:' || v_root;
end;
$$;

-- Where a subject falls for a split step: a number in [0, 1) from the first 60 bits of
-- md5(workflow id:step id:subject), over 2^60, truncated to 18 decimals (computed exactly:
-- an integer quotient, then a shift). md5 is fixed by its RFC, so the choice never changes
-- with the PostgreSQL version (hashtext's may).
create or replace function conveyor.split_fraction(p_workflow_id bigint, p_step_id text, p_subject text)
returns numeric
language sql
immutable
parallel safe
set search_path = ''
as $$
  select pg_catalog.div(
    ('x' || pg_catalog.substr(pg_catalog.md5(p_workflow_id || ':' || p_step_id || ':' || p_subject), 1, 15))::bit(60)
      ::bigint::numeric * 1000000000000000000,
    1152921504606846976
  ) * 0.000000000000000001;
$$;

-- The branch of p_split (a validated split list) a subject takes: the first whose
-- cumulative weight exceeds bucket = fraction × total weight. Its output: {"branch":
-- "split[<i>]", "index", "name", "goto", "weight", "total", "bucket", "range": [from, to),
-- "subject"}.
create or replace function conveyor.split_choose(
  p_split jsonb,
  p_workflow_id bigint,
  p_step_id text,
  p_subject text
)
returns jsonb
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
declare
  v_total numeric := 0;
  v_upto numeric := 0;
  v_bucket numeric;
  v_branch record;
begin
  select sum((b.b ->> 'weight')::numeric) into v_total from jsonb_array_elements(p_split) as b (b);
  v_bucket := pg_catalog.trim_scale(conveyor.split_fraction(p_workflow_id, p_step_id, p_subject) * v_total);
  for v_branch in select (e.n - 1)::integer as idx, e.b from jsonb_array_elements(p_split) with ordinality as e (b, n)
  loop
    v_upto := v_upto + (v_branch.b ->> 'weight')::numeric;
    if v_bucket < v_upto then
      return jsonb_build_object(
        'branch', format('split[%s]', v_branch.idx),
        'index', v_branch.idx,
        'name', conveyor.split_branch_name(v_branch.b),
        'goto', v_branch.b -> 'goto',
        'weight', v_branch.b -> 'weight',
        'total', v_total,
        'bucket', v_bucket,
        'range', jsonb_build_array(v_upto - (v_branch.b ->> 'weight')::numeric, v_upto),
        'subject', p_subject
      );
    end if;
  end loop;
  -- unreachable for a validated list (bucket < total)
  raise exception using
    errcode = '22023',
    message = format('split of step "%s": no branch for bucket %s of %s', p_step_id, v_bucket, v_total);
end;
$$;

-- How a split step runs (put into the interpreter by conveyor.generate_interpreter, sql/step_kinds.sql).
create or replace function conveyor.step_split_code()
returns jsonb
language sql
immutable
parallel safe
set search_path = ''
as $$
  select pg_catalog.jsonb_build_object(
    'run', $code$
v_input := v_spec;
v_output := conveyor.split_choose(v_spec, v_exec.workflow_id, v_step.step_id, conveyor.split_subject(
  v_exec.entity_type, v_exec.entity_id, v_exec.event_id, v_exec.execution_id, v_exec.retry_of
));
v_next := v_step.branches ->> (v_output ->> 'branch');
$code$,
    'decision', $code$format('%s "%s" → %s: bucket %s of %s falls in [%s, %s) (weight %s), hashed from %s',
  p_output ->> 'branch', p_output ->> 'name',
  coalesce('step "' || (p_output ->> 'goto') || '"', 'the end'),
  p_output ->> 'bucket', p_output ->> 'total', p_output #>> '{range,0}', p_output #>> '{range,1}',
  p_output ->> 'weight', p_output ->> 'subject')$code$
  );
$$;
