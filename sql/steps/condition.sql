-- The condition step: {"id", "if": <condition>, "then"?, "else"?}. The condition language
-- is sql/conditions.sql; an omitted branch falls through to the next step in document order.

create or replace function conveyor.step_condition_errors(p_step jsonb, p_path text, p_step_ids jsonb)
returns setof text
language sql
stable
set search_path = ''
as $$
  select c.message from conveyor.document_condition_errors(p_step -> 'if', p_path || '.if', p_step_ids) as c (message);
$$;

-- How a condition step runs (put into the interpreter by conveyor.generate_interpreter, sql/step_kinds.sql).
create or replace function conveyor.step_condition_code()
returns jsonb
language sql
immutable
parallel safe
set search_path = ''
as $$
  select pg_catalog.jsonb_build_object(
    'prepare', $code$
-- a single leaf on a field is planned once (conveyor.condition_plan): no context object then
v_steps_condition[v_step_pos] := conveyor.condition_plan(v_spec);
v_steps_need_ctx[v_step_pos] := v_steps_condition[v_step_pos] is null;
$code$,
    'run', $code$
v_input := v_spec;
-- a single leaf goes straight to eval_condition_leaf (what eval_condition would do)
v_target := case
  when (case
    -- a planned leaf: its operator on the value at its path in the execution
    when v_condition is not null then conveyor.condition_compare(
      v_condition ->> 'op',
      coalesce(case v_condition ->> 'root'
        when 'trigger' then v_exec.trigger
        when 'steps' then v_exec.step_outputs
        else v_exec.vars
      end #> (v_condition ->> 'rest')::text[], 'null'::jsonb),
      v_condition -> 'value',
      v_spec ->> 'field'  -- for errors
    )
    when jsonb_typeof(v_spec) = 'object' and not v_spec ?| array['all', 'any', 'not']
      then conveyor.eval_condition_leaf(v_spec, v_ctx)
    else conveyor.eval_condition(v_spec, v_ctx)
  end) then 'then'
  else 'else'
end;
v_next := case when v_step.branches ? v_target then v_step.branches ->> v_target else v_step.next_step end;
v_output := jsonb_build_object('result', v_target = 'then', 'branch', v_target);
$code$,
    'decision', $code$p_output ->> 'branch'$code$
  );
$$;
