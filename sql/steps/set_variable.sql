-- The set step: {"id", "set": {"<variable>": <value with templates>, ...}, "next"?}: the
-- values are rendered and kept in the execution's variables (`{{vars.<name>}}`).

create or replace function conveyor.step_set_variable_errors(p_step jsonb, p_path text, p_step_ids jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
begin
  if jsonb_typeof(p_step -> 'set') <> 'object' or p_step -> 'set' = '{}' then
    return next format('%s.set: expected an object of variable names and values', p_path);
    return;
  end if;
  return query
  select v.message
  from (
    select conveyor.document_var_error(k.k, p_path || '.set.' || k.k) as message, k.k
    from jsonb_object_keys(p_step -> 'set') as k (k)
  ) as v
  where v.message is not null
  order by v.k;
  return query
  select t.message from conveyor.document_template_errors(p_step -> 'set', p_path || '.set', p_step_ids) as t (message);
end;
$$;

-- How a set step runs (put into the interpreter by conveyor.generate_interpreter, sql/step_kinds.sql).
create or replace function conveyor.step_set_variable_code()
returns jsonb
language sql
immutable
parallel safe
set search_path = ''
as $$
  select pg_catalog.jsonb_build_object(
    'run', $code$
if jsonb_typeof(v_input) is distinct from 'object' then
  raise exception using errcode = '22023', message = format('%s.set: expected an object', v_where);
end if;
v_output := v_input;
v_new_vars := v_input;
$code$
  );
$$;
