-- The notify step: {"id", "notify": {"to", "title" | "template" (+ "data"), "message"?,
-- "category"?, "type"?, "priority"?, "entity_type"?, "entity_id"?, "action_url"?,
-- "action_label"?, "group_key"?, "expires_in"?}, "next"?}: an in-app notification of each
-- recipient, written in the step's transaction, and its email / SMS deliveries by the
-- recipient's preferences (conveyor.notify_from_step, sql/notifications.sql); its output is
-- {"notification_ids": [...]}. A literal template slug must exist when the workflow is
-- published (conveyor.document_notify_template_errors).

create or replace function conveyor.step_notify_errors(p_step jsonb, p_path text, p_step_ids jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_spec jsonb := p_step -> 'notify';
  v_path text := p_path || '.notify';
  v_max bigint := conveyor.limit_setting('max_notify_recipients', 100);
  v_key text;
begin
  if jsonb_typeof(v_spec) is distinct from 'object' then
    return next format('%s: expected an object with "to" and "title"', v_path);
    return;
  end if;
  return query
  select k.message
  from conveyor.document_key_errors(v_spec, v_path, array['to'], conveyor.notification_keys()) as k (message);
  -- the in-app title: given, or from the template
  if not (v_spec ?| array['title', 'template']) then
    return next format('%s.title: required key is missing (or name a "template")', v_path);
  end if;
  if (v_spec ? 'template') and (jsonb_typeof(v_spec -> 'template') <> 'string'
    or (v_spec ->> 'template') !~ '^([a-z][a-z0-9_.-]{0,63}|.*\{\{.*)$') then
    return next format('%s.template: expected a template slug (got %s)', v_path, (v_spec -> 'template')::text);
  end if;
  if (v_spec ? 'data') and jsonb_typeof(v_spec -> 'data') not in ('object', 'string') then
    return next format('%s.data: expected an object of template variables (got %s)', v_path, (v_spec -> 'data')::text);
  elsif (v_spec ? 'data') and not (v_spec ? 'template') then
    return next format('%s.data: template variables without a "template"', v_path);
  end if;

  -- to: a user id, a template giving one (or a list), or a list of them
  if jsonb_typeof(v_spec -> 'to') = 'array' then
    if jsonb_array_length(v_spec -> 'to') = 0 then
      return next format('%s.to: the list of recipients is empty', v_path);
    elsif jsonb_array_length(v_spec -> 'to') > v_max then
      return next format('%s.to: %s recipients, at most %s (setting conveyor.max_notify_recipients)', v_path,
        jsonb_array_length(v_spec -> 'to'), v_max);
    end if;
    return query
    select format('%s.to[%s]: expected a user id (got %s)', v_path, e.n - 1, e.v::text)
    from jsonb_array_elements(v_spec -> 'to') with ordinality as e (v, n)
    where jsonb_typeof(e.v) not in ('string', 'number') or btrim(e.v #>> '{}') = ''
    order by e.n;
  elsif (v_spec ? 'to') and (jsonb_typeof(v_spec -> 'to') not in ('string', 'number')
    or btrim(v_spec ->> 'to') = '') then
    return next format('%s.to: expected a user id, a template or a list of user ids (got %s)', v_path,
      (v_spec -> 'to')::text);
  end if;

  if (v_spec ? 'title') and (jsonb_typeof(v_spec -> 'title') <> 'string' or btrim(v_spec ->> 'title') = '') then
    return next format('%s.title: expected a non-empty text (got %s)', v_path, (v_spec -> 'title')::text);
  end if;
  foreach v_key in array array['message', 'category', 'entity_type', 'entity_id', 'action_url', 'action_label',
    'group_key'] loop
    if (v_spec ? v_key) and jsonb_typeof(v_spec -> v_key) not in ('string', 'number') then
      return next format('%s.%s: expected a text (got %s)', v_path, v_key, (v_spec -> v_key)::text);
    end if;
  end loop;
  -- type and priority: one of their values, or a template that gives one at run time
  if (v_spec ? 'type') and not coalesce(strpos(v_spec ->> 'type', '{{') > 0, false)
    and (v_spec -> 'type') not in ('"info"', '"success"', '"warning"', '"error"', '"action_required"') then
    return next format('%s.type: unknown type %s (expected info, success, warning, error or action_required)',
      v_path, (v_spec -> 'type')::text);
  end if;
  if (v_spec ? 'priority') and not coalesce(strpos(v_spec ->> 'priority', '{{') > 0, false)
    and (v_spec -> 'priority') not in ('"low"', '"normal"', '"high"', '"critical"') then
    return next format('%s.priority: unknown priority %s (expected low, normal, high or critical)',
      v_path, (v_spec -> 'priority')::text);
  end if;
  if v_spec ? 'expires_in' then
    return query
    select d.message
    from (select conveyor.document_duration_error(v_spec -> 'expires_in', v_path || '.expires_in') as message) as d
    where d.message is not null;
  end if;

  -- each field's templates on their own, so that a message names the field
  return query
  select t.message
  from jsonb_each(v_spec - 'expires_in') as f (k, v)
  cross join lateral conveyor.document_template_errors(f.v, v_path || '.' || f.k, p_step_ids) as t (message)
  order by array_position(array['to'] || conveyor.notification_keys(), f.k);
end;
$$;

-- How a notify step runs (put into the interpreter by conveyor.generate_interpreter, sql/step_kinds.sql).
create or replace function conveyor.step_notify_code()
returns jsonb
language sql
immutable
parallel safe
set search_path = ''
as $$
  select pg_catalog.jsonb_build_object(
    'run', $code$
-- one in-app notification per recipient, in the step's transaction (sql/notifications.sql)
v_output := conveyor.notify_from_step(v_exec, v_step.step_id, v_input);
$code$
  );
$$;
