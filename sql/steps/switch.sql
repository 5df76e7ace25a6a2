-- The switch step: {"id", "switch": [{"when": <condition>, "goto": <step id>}, ...],
-- "default"?}: the first case whose condition holds, else the default.

create or replace function conveyor.step_switch_errors(p_step jsonb, p_path text, p_step_ids jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
begin
  if coalesce(p_step -> 'switch', '[]') in ('[]', 'null') or jsonb_typeof(p_step -> 'switch') <> 'array' then
    return next format('%s.switch: expected a non-empty array of {"when": <condition>, "goto": <step id>}', p_path);
    return;
  end if;
  return query
  select m.message
  from jsonb_array_elements(p_step -> 'switch') with ordinality as c (case_, n)
  cross join lateral (
    select 1 as ord, x.message, x.n
    from (
      select format('%s.switch[%s]: expected an object with "when" and "goto"', p_path, c.n - 1) as message, 1::bigint as n
      where jsonb_typeof(c.case_) <> 'object'
    ) as x
    union all
    select 2, k.message, k.n
    from conveyor.document_key_errors(
      case when jsonb_typeof(c.case_) = 'object' then c.case_ else '{"when": null, "goto": null}' end,
      format('%s.switch[%s]', p_path, c.n - 1), array['when', 'goto']
    ) with ordinality as k (message, n)
    union all
    select 3, conveyor.document_target_error(c.case_ -> 'goto', format('%s.switch[%s].goto', p_path, c.n - 1),
      p_step_ids), 1
    union all
    select 4, w.message, w.n
    from conveyor.document_condition_errors(c.case_ -> 'when', format('%s.switch[%s].when', p_path, c.n - 1),
      p_step_ids) with ordinality as w (message, n)
    where jsonb_typeof(c.case_) = 'object' and c.case_ ? 'when'
  ) as m
  where m.message is not null
  order by c.n, m.ord, m.n;
end;
$$;

-- What compiling adds for a switch: its cases, in order ({"cases": [{"when", "goto"}]}).
create or replace function conveyor.step_switch_compiled(p_step jsonb, p_fall_through text)
returns jsonb
language sql
immutable
parallel safe
set search_path = ''
as $$
  select pg_catalog.jsonb_build_object('branches', pg_catalog.jsonb_build_object('cases', coalesce((
    select pg_catalog.jsonb_agg(
      pg_catalog.jsonb_build_object('when', c.case_ -> 'when', 'goto', c.case_ -> 'goto') order by c.n
    )
    from pg_catalog.jsonb_array_elements(
      case when pg_catalog.jsonb_typeof(p_step -> 'switch') = 'array' then p_step -> 'switch' else '[]' end
    ) with ordinality as c (case_, n)
  ), '[]')));
$$;

-- How a switch step runs (put into the interpreter by conveyor.generate_interpreter, sql/step_kinds.sql).
create or replace function conveyor.step_switch_code()
returns jsonb
language sql
immutable
parallel safe
set search_path = ''
as $$
  select pg_catalog.jsonb_build_object(
    'prepare', $code$
v_steps_need_ctx[v_step_pos] := true;
$code$,
    'run', $code$
select (c.n - 1)::integer, c.item ->> 'goto'
into v_case, v_target
from jsonb_array_elements(coalesce(v_step.branches -> 'cases', v_spec -> 'switch', '[]')) with ordinality
  as c (item, n)
where conveyor.eval_condition(c.item -> 'when', v_ctx)
order by c.n
limit 1;
if found then
  v_next := v_target;
  v_output := jsonb_build_object('case', v_case, 'branch', format('cases[%s]', v_case));
else
  v_next := case
    when v_step.branches ? 'default' then v_step.branches ->> 'default'
    else v_step.next_step
  end;
  v_output := jsonb_build_object('case', null, 'branch', 'default');
end if;
$code$,
    'decision', $code$p_output ->> 'branch'$code$
  );
$$;
