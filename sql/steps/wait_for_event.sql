-- The wait_for_event step: {"id", "wait_for_event": {"event", "match"?, "since"?,
-- "timeout"}, "on_event"?, "on_timeout"?}: the execution waits for a correlated event
-- (sql/waits.sql) or its timeout.

drop function if exists conveyor.document_wait_errors(jsonb, text, text[]);

-- wait_for_event: {"event", "match"?, "since"?, "timeout"}.
create or replace function conveyor.step_wait_for_event_errors(p_step jsonb, p_path text, p_step_ids jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_wait jsonb := p_step -> 'wait_for_event';
  v_path text := p_path || '.wait_for_event';
begin
  if jsonb_typeof(v_wait) is distinct from 'object' then
    return next format('%s: expected an object with "event" and "timeout"', v_path);
    return;
  end if;
  return query
  select k.message
  from conveyor.document_key_errors(v_wait, v_path, array['event', 'timeout'], array['match', 'since']) as k (message);
  if v_wait ? 'event' and (jsonb_typeof(v_wait -> 'event') <> 'string'
    or (v_wait ->> 'event') !~ '^(\*|[a-z][a-z0-9_]*\.\*|[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*\.(\*|[a-z][a-z0-9_]*))$') then
    return next format(
      '%s.event: invalid event pattern %s (expected module.entity.action such as email.message.replied)',
      v_path, (v_wait -> 'event')::text
    );
  end if;
  if v_wait ? 'timeout' then
    return query
    select d.message
    from (select conveyor.document_duration_error(v_wait -> 'timeout', v_path || '.timeout') as message) as d
    where d.message is not null;
  end if;
  if v_wait ? 'match' then
    if jsonb_typeof(v_wait -> 'match') <> 'object' then
      return next format('%s.match: expected an object such as {"entity_id": "{{trigger.entity_id}}"}', v_path);
    else
      return query
      select format(
        '%s.match.%s: unknown match key (expected entity_type, entity_id, source or payload.<field>)', v_path, k.k
      )
      from jsonb_object_keys(v_wait -> 'match') as k (k)
      where k.k !~ '^(entity_type|entity_id|source|payload(\.[A-Za-z0-9_]+)+)$'
      order by k.k;
      return query
      select t.message
      from conveyor.document_template_errors(v_wait -> 'match', v_path || '.match', p_step_ids) as t (message);
    end if;
  end if;
  if v_wait ? 'since' then
    if jsonb_typeof(v_wait -> 'since') <> 'string' then
      return next format(
        '%s.since: expected "execution", "wait", a timestamp or a template, got %s', v_path, (v_wait -> 'since')::text
      );
    elsif strpos(v_wait ->> 'since', '{{') > 0 then
      return query
      select t.message
      from conveyor.document_template_errors(v_wait -> 'since', v_path || '.since', p_step_ids) as t (message);
    elsif (v_wait ->> 'since') not in ('execution', 'wait') and not conveyor.is_timestamp(v_wait ->> 'since') then
      return next format(
        '%s.since: %s is not "execution", "wait", a timestamp or a template', v_path, (v_wait -> 'since')::text
      );
    end if;
  end if;
end;
$$;

-- How a wait_for_event step runs (put into the interpreter by conveyor.generate_interpreter, sql/step_kinds.sql).
create or replace function conveyor.step_wait_for_event_code()
returns jsonb
language sql
immutable
parallel safe
set search_path = ''
as $$
  select pg_catalog.jsonb_build_object(
    'run', $code$
if v_input ? 'timeout' then
  v_resume := p_now + conveyor.parse_duration(v_input ->> 'timeout');
end if;
-- looks back for what already answers the wait, else registers it (sql/waits.sql)
v_output := conveyor.wait_begin(v_exec, v_step.kind, v_step.step_id, v_input, v_resume, p_now, not v_dry, v_where);
if v_output ? 'timed_out' then
  v_next := case when v_step.branches ? 'event' then v_step.branches ->> 'event' else v_step.next_step end;
else
  v_wait := 'event';
end if;
$code$,
    'decision', $code$pg_catalog.format('would wait for %s until %s; dry run follows the timeout branch', p_input ->> 'event', coalesce(p_output ->> 'timeout_at', 'forever'))$code$
  );
$$;
