-- The stop step: {"id", "stop": {"reason"?, "status"?: "completed" | "failed"}}: the
-- execution ends here, with that status (completed by default).

create or replace function conveyor.step_stop_errors(p_step jsonb, p_path text, p_step_ids jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
begin
  if jsonb_typeof(p_step -> 'stop') <> 'object' then
    return next format('%s.stop: expected an object such as {"reason": "...", "status": "completed"}', p_path);
    return;
  end if;
  return query
  select k.message
  from conveyor.document_key_errors(p_step -> 'stop', p_path || '.stop', '{}', array['reason', 'status']) as k (message);
  if (p_step -> 'stop') ? 'status' and (p_step -> 'stop' -> 'status') not in ('"completed"', '"failed"') then
    return next format('%s.stop.status: expected "completed" or "failed" (got %s)', p_path,
      (p_step -> 'stop' -> 'status')::text);
  end if;
  if (p_step -> 'stop') ? 'reason' then
    return query
    select t.message
    from conveyor.document_template_errors(p_step -> 'stop' -> 'reason', p_path || '.stop.reason', p_step_ids)
      as t (message);
  end if;
end;
$$;

-- How a stop step runs (put into the interpreter by conveyor.generate_interpreter, sql/step_kinds.sql).
create or replace function conveyor.step_stop_code()
returns jsonb
language sql
immutable
parallel safe
set search_path = ''
as $$
  select pg_catalog.jsonb_build_object(
    'run', $code$
v_output := jsonb_build_object(
  'status', coalesce(v_input ->> 'status', 'completed'), 'reason', v_input -> 'reason'
);
v_next := null;
$code$,
    'decision', $code$'stop: ' || (p_output ->> 'status')$code$
  );
$$;
