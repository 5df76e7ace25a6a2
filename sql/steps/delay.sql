-- The delay step: {"id", "delay": {"for"?, "until"?, "window"?}, "next"?}: the execution
-- waits (status waiting, resume_at) and is resumed by the tick (sql/delays.sql).

drop function if exists conveyor.document_delay_errors(jsonb, text, text[]);
drop function if exists conveyor.document_delay_errors(jsonb, text, jsonb);

-- A delay: {"for"} | {"until"} | {"window"} | {"for", "window"}.
create or replace function conveyor.step_delay_errors(p_step jsonb, p_path text, p_step_ids jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_delay jsonb := p_step -> 'delay';
  v_path text := p_path || '.delay';
  v_window jsonb := v_delay -> 'window';
begin
  if jsonb_typeof(v_delay) is distinct from 'object' then
    return next format('%s: expected an object with "for", "until" or "window"', v_path);
    return;
  end if;
  return query
  select k.message from conveyor.document_key_errors(v_delay, v_path, '{}', array['for', 'until', 'window']) as k (message);
  if not (v_delay ? 'for' or v_delay ? 'until' or v_delay ? 'window') then
    return next format('%s: needs "for" (a duration), "until" (a timestamp) or "window" (allowed times)', v_path);
  end if;
  if v_delay ? 'until' and (v_delay ? 'for' or v_delay ? 'window') then
    return next format('%s.until: cannot be combined with "for" or "window"', v_path);
  end if;

  if v_delay ? 'for' then
    return query
    select d.message
    from (select conveyor.document_duration_error(v_delay -> 'for', v_path || '.for') as message) as d
    where d.message is not null;
  end if;

  if v_delay ? 'until' then
    if jsonb_typeof(v_delay -> 'until') = 'string' and strpos(v_delay ->> 'until', '{{') > 0 then
      return query
      select t.message
      from conveyor.document_template_errors(v_delay -> 'until', v_path || '.until', p_step_ids) as t (message);
    else
      return query
      select d.message
      from (select conveyor.document_timestamp_error(v_delay -> 'until', v_path || '.until') as message) as d
      where d.message is not null;
    end if;
  end if;

  -- The window's shape is conveyor.window_errors' business (the same rules as at run time);
  -- a templated timezone is checked as a template.
  if v_delay ? 'window' then
    return query
    select w.message from conveyor.window_errors(v_window, v_path || '.window') as w (message);
    if jsonb_typeof(v_window -> 'timezone') = 'string' and strpos(v_window ->> 'timezone', '{{') > 0 then
      return query
      select t.message
      from conveyor.document_template_errors(v_window -> 'timezone', v_path || '.window.timezone', p_step_ids)
        as t (message);
    end if;
  end if;
end;
$$;

-- How a delay step runs (put into the interpreter by conveyor.generate_interpreter, sql/step_kinds.sql).
create or replace function conveyor.step_delay_code()
returns jsonb
language sql
immutable
parallel safe
set search_path = ''
as $$
  select pg_catalog.jsonb_build_object(
    'run', $code$
v_resume := p_now;
if v_input ? 'for' then
  v_resume := v_resume + conveyor.parse_duration(v_input ->> 'for');
end if;
if v_input ? 'until' then
  v_resume := conveyor.parse_until(v_input ->> 'until', p_now);
end if;
if v_input ? 'window' then
  v_resume := conveyor.next_window_start(v_resume, v_input -> 'window');
end if;
v_output := jsonb_build_object('resume_at', v_resume, 'waited', v_resume > p_now);
if v_resume > p_now then
  v_wait := 'delay';
else
  v_resume := null;
end if;
$code$,
    'decision', $code$case when (p_output ->> 'waited')::boolean then 'would wait until ' || (p_output ->> 'resume_at') else 'no wait (time already passed)' end$code$
  );
$$;
