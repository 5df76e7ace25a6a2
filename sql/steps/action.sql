-- The action step: {"id", "action": "<type>", "connection"?, "with", "next"?, "retry"?,
-- "timeout"?, "on_error"?}. The interpreter queues it for the runner (sql/actions.sql),
-- which performs it (runner/conveyor/actions/) and writes the result back.

-- An action step: its retry policy, its timeout and its `with`.
create or replace function conveyor.step_action_errors(p_step jsonb, p_path text, p_step_ids jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
begin
  if p_step ? 'retry' then
    return query
    select r.message from conveyor.document_retry_errors(p_step -> 'retry', p_path || '.retry') as r (message);
  end if;
  if p_step ? 'timeout' then
    return query
    select d.message
    from (
      select conveyor.document_duration_error(
        p_step -> 'timeout', p_path || '.timeout', conveyor.max_action_timeout(), 'conveyor.max_action_timeout'
      ) as message
    ) as d
    where d.message is not null;
  end if;
  return query select a.message from conveyor.step_action_with_errors(p_step, p_path, p_step_ids) as a (message);
end;
$$;

-- What compiling adds for an action step: its type.
create or replace function conveyor.step_action_compiled(p_step jsonb, p_fall_through text)
returns jsonb
language sql
immutable
parallel safe
set search_path = ''
as $$
  select pg_catalog.jsonb_build_object('action_type', p_step ->> 'action');
$$;
drop function if exists conveyor.document_action_errors(jsonb, text, text[]);
drop function if exists conveyor.document_action_errors(jsonb, text, jsonb);

-- An action step's `with`, checked against its action type's keys.
create or replace function conveyor.step_action_with_errors(p_step jsonb, p_path text, p_step_ids jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_action text := p_step ->> 'action';
  v_with jsonb := p_step -> 'with';
  v_required text[];
  v_optional text[];
begin
  case v_action
    when 'email.send' then
      v_required := array['to', 'subject'];
      v_optional := array['text', 'html', 'cc', 'bcc', 'from_name', 'reply_to', 'tags', 'list_unsubscribe'];
    when 'webhook.send' then
      v_required := array['url'];
      v_optional := array['method', 'headers', 'body', 'timeout'];
    when 'slack.send' then
      v_required := array['text'];
      v_optional := array['blocks', 'username', 'icon_emoji', 'icon_url', 'channel'];
    when 'discord.send' then
      v_required := array['text'];
      v_optional := array['username', 'avatar_url', 'embeds'];
    when 'sms.send' then
      v_required := array['to', 'body'];
      v_optional := array['from'];
    else
      return next format(
        '%s.action: unknown action type %s (expected one of: email.send, webhook.send, slack.send, '
        'discord.send, sms.send)',
        p_path, (p_step -> 'action')::text
      );
  end case;

  if v_action is distinct from 'email.send' then
    return query
    select format('%s.%s: only email.send steps take %s', p_path, k.k, k.k)
    from unnest(array['tags', 'list_unsubscribe']) as k (k)
    where p_step ? k.k;
  end if;

  if p_step ? 'connection' and jsonb_typeof(p_step -> 'connection') <> 'null'
    and (jsonb_typeof(p_step -> 'connection') <> 'string' or p_step ->> 'connection' = '') then
    return next format('%s.connection: expected a connection name (got %s)', p_path, (p_step -> 'connection')::text);
  end if;

  if not p_step ? 'with' then
    return next format('%s.with: required key is missing', p_path);
    return;
  end if;
  if jsonb_typeof(v_with) <> 'object' then
    return next format('%s.with: expected an object', p_path);
    return;
  end if;

  if v_required is not null then
    return query
    select k.message from conveyor.document_key_errors(v_with, p_path || '.with', v_required, v_optional) as k (message);
    if v_action = 'email.send' and not (v_with ? 'text' or v_with ? 'html') then
      return next format('%s.with: needs "text" or "html" (the body of the email)', p_path);
    end if;
    if v_action = 'email.send' then
      -- tags and list_unsubscribe, in `with` or on the step itself (sql/email_tracking.sql)
      return query select e.message from conveyor.email_step_errors(v_with, p_path || '.with') as e (message);
      return query select e.message from conveyor.email_step_errors(p_step, p_path) as e (message);
      return query
      select format('%s.%s: given both on the step and in its with; give it once', p_path, k.k)
      from unnest(array['tags', 'list_unsubscribe']) as k (k)
      where p_step ? k.k and v_with ? k.k;
      if jsonb_typeof(p_step -> 'tags') = 'object' then
        return query
        select t.message from conveyor.document_template_errors(p_step -> 'tags', p_path || '.tags', p_step_ids) as t (message);
      end if;
    end if;
    if v_action = 'webhook.send' then
      if jsonb_typeof(v_with -> 'url') = 'string' and strpos(v_with ->> 'url', '{{') = 0
        and v_with ->> 'url' !~* '^https?://[^/]+' then
        return next format('%s.with.url: expected an http:// or https:// URL (got %s)', p_path, (v_with -> 'url')::text);
      end if;
      if v_with ? 'method' and (jsonb_typeof(v_with -> 'method') <> 'string' or (
        strpos(v_with ->> 'method', '{{') = 0
        and upper(v_with ->> 'method') not in ('GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD'))) then
        return next format(
          '%s.with.method: expected one of GET, POST, PUT, PATCH, DELETE, HEAD (got %s)',
          p_path, (v_with -> 'method')::text
        );
      end if;
      if v_with ? 'headers' and jsonb_typeof(v_with -> 'headers') <> 'object' then
        return next format('%s.with.headers: expected an object of header names and values', p_path);
      end if;
      if v_with ? 'timeout' then
        return query
        select d.message
        from (
          select conveyor.document_duration_error(
            v_with -> 'timeout', p_path || '.with.timeout', conveyor.max_action_timeout(), 'conveyor.max_action_timeout'
          ) as message
        ) as d
        where d.message is not null;
      end if;
    end if;
  end if;

  return query
  select t.message from conveyor.document_template_errors(v_with, p_path || '.with', p_step_ids) as t (message);
end;
$$;

-- How an action step runs (put into the interpreter by conveyor.generate_interpreter, sql/step_kinds.sql).
create or replace function conveyor.step_action_code()
returns jsonb
language sql
immutable
parallel safe
set search_path = ''
as $$
  select pg_catalog.jsonb_build_object(
    'prepare', $code$
-- what it renders is its `with` (an email's with its step-level tags and list_unsubscribe,
-- sql/email_tracking.sql); the values an email's html takes in are HTML-escaped
v_steps_render[v_step_pos] := conveyor.render_plan(
  case
    when v_step.action_type = 'email.send' and (v_spec ? 'tags' or v_spec ? 'list_unsubscribe') then
      coalesce(v_spec -> 'with', '{}')
      || jsonb_strip_nulls(jsonb_build_object('tags', v_spec -> 'tags', 'list_unsubscribe', v_spec -> 'list_unsubscribe'))
    else coalesce(v_spec -> 'with', '{}')
  end,
  'step "' || v_step.step_id || '".with', v_step.action_type = 'email.send'
);
v_steps_need_ctx[v_step_pos] := coalesce((v_steps_render[v_step_pos] ->> 'context')::boolean, false);
$code$,
    'run', $code$
-- publish refuses a timeout over the maximum; one stored before the maximum
-- existed fails here rather than hold a runner's slot (and hide its message)
-- for that long
v_max_action_timeout := coalesce(v_max_action_timeout, conveyor.max_action_timeout());
if v_step.timeout > v_max_action_timeout then
  raise exception using
    errcode = '22023',
    message = format(
      '%s.timeout: duration "%s" exceeds the maximum %s (setting conveyor.max_action_timeout)',
      v_where, conveyor.duration_text(v_step.timeout), conveyor.duration_text(v_max_action_timeout)
    ),
    hint = 'Publish the workflow again with a timeout of at most the maximum.';
end if;
v_wait := 'action';
-- a list_unsubscribe email to a suppressed address is skipped, not sent (sql/email_tracking.sql)
if v_step.action_type = 'email.send' and v_input ->> 'list_unsubscribe' = 'true' then
  v_output := conveyor.email_skip(v_exec.tenant_id, v_input);
  if v_output is not null then
    v_wait := null;
    v_logs := v_logs || row(
      null, v_exec.tenant_id, v_exec.execution_id, v_exec.workflow_id, null, v_step.step_id, 'info',
      format('step "%s" skipped: %s', v_step.step_id, v_output ->> 'message'), v_output, now()
    )::conveyor.execution_logs;
  end if;
end if;
$code$,
    'decision', $code$'would send ' || p_action_type$code$
  );
$$;
