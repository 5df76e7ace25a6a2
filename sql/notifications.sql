-- In-app notifications (docs/notifications.md): writing one (the notify step,
-- sql/steps/notify.sql, and conveyor.notify_user) and what the platform calls to show and
-- mark a user's notifications. Every application function is tenant-checked
-- (conveyor.require_tenant) and acts on p_tenant_id's rows of one user only: the platform
-- passes the user it has authenticated, and a notification of another user or tenant is
-- refused with the same error as one that does not exist (nothing tells them apart).

-- The notification fields a spec may carry besides the recipients, in message order.
create or replace function conveyor.notification_keys()
returns text[]
language sql
immutable
parallel safe
set search_path = ''
as $$
  select array[
    'title', 'message', 'category', 'type', 'priority', 'entity_type', 'entity_id', 'action_url',
    'action_label', 'group_key', 'expires_in', 'template', 'data'
  ];
$$;

-- Writes one notification of p_user_id from a rendered spec ({"title", "message"?, ...},
-- conveyor.notification_keys) and wakes the LISTEN hub of `conveyor serve`
-- (runner/conveyor/serve/hub.py); the NOTIFY is sent only if the transaction commits.
-- p_where names the caller in errors ('step "tell"', 'conveyor.notify_user').
--
-- With "template" (a slug, sql/notification_templates.sql) and "data" (its variables) the
-- template gives the in-app fields, category, type and priority (the spec's own fields
-- win) and the email / SMS content. The user's preference for the category decides each
-- channel (conveyor.resolve_notification_channels): the in-app row is always written (as
-- archived when the user does not want it in-app); email and SMS become deliveries
-- (conveyor.plan_deliveries): queued in this transaction, held, digested or dropped. A
-- tenant that has set no channel (conveyor.set_notification_channel) sends in-app only.
create or replace function conveyor.insert_notification(
  p_tenant_id text,
  p_user_id text,
  p_spec jsonb,
  p_where text,
  p_execution_id bigint default null,
  p_step_id text default null
)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  v_key text;
  v_id bigint;
  v_spec jsonb := p_spec;
  v_slug text;
  v_doc jsonb;
  v_data jsonb;
  v_recipient jsonb;
  v_decisions jsonb;
  v_content jsonb := '{}';
  v_row conveyor.notifications;
  v_channel text;
  v_connections jsonb;
  v_prefs jsonb;
begin
  if jsonb_typeof(p_spec) is distinct from 'object' then
    raise exception using errcode = '22023',
      message = format('%s: expected a notification object with "title" (got %s)', p_where,
        coalesce(jsonb_typeof(p_spec), 'null'));
  end if;
  select k into v_key from jsonb_object_keys(p_spec) as k where k <> all(conveyor.notification_keys()) order by k limit 1;
  if v_key is not null then
    raise exception using errcode = '22023',
      message = format('%s.%s: unknown notification field (expected one of: %s)', p_where, v_key,
        array_to_string(conveyor.notification_keys(), ', '));
  end if;
  if p_user_id is null or btrim(p_user_id) = '' then
    raise exception using errcode = '22023', message = format('%s.to: a recipient user id is empty', p_where);
  end if;
  if p_spec ? 'template' then
    v_slug := p_spec ->> 'template';
    v_doc := conveyor.notification_template(p_tenant_id, v_slug);
    if v_doc is null then
      raise exception using errcode = '22023',
        message = format('%s.template: no notification template %L (the tenant''s or a system template)', p_where,
          coalesce(v_slug, (p_spec -> 'template')::text));
    end if;
    v_data := conveyor.notification_template_data(v_doc, v_slug, p_spec -> 'data', p_where);
    v_spec := jsonb_strip_nulls(jsonb_build_object(
      'category', v_doc -> 'category', 'type', v_doc -> 'type', 'priority', v_doc -> 'priority'
    )) || (
      select coalesce(jsonb_object_agg(e.key, e.value), '{}')
      from jsonb_each(conveyor.render_notification_part(v_doc, v_slug, 'in_app', v_data, p_where)) as e
      where e.value <> '""'
    ) || (p_spec - 'template' - 'data');
  elsif p_spec ? 'data' then
    raise exception using errcode = '22023',
      message = format('%s.data: template variables without a "template"', p_where);
  end if;
  if jsonb_typeof(v_spec -> 'title') is distinct from 'string' or btrim(v_spec ->> 'title') = '' then
    raise exception using errcode = '22023',
      message = format('%s.title: a notification needs a non-empty title (got %s)', p_where,
        coalesce((v_spec -> 'title')::text, 'nothing'));
  end if;
  if coalesce(v_spec ->> 'type', 'info') not in ('info', 'success', 'warning', 'error', 'action_required') then
    raise exception using errcode = '22023',
      message = format('%s.type: unknown type %L (expected info, success, warning, error or action_required)',
        p_where, v_spec ->> 'type');
  end if;
  if coalesce(v_spec ->> 'priority', 'normal') not in ('low', 'normal', 'high', 'critical') then
    raise exception using errcode = '22023',
      message = format('%s.priority: unknown priority %L (expected low, normal, high or critical)',
        p_where, v_spec ->> 'priority');
  end if;

  v_spec := v_spec || jsonb_build_object('category', coalesce(nullif(v_spec ->> 'category', ''), 'general'));
  -- A tenant that has set no channel sends in-app only: no address is looked up and no
  -- delivery is recorded (the in-app rule still follows the user's preference).
  select jsonb_object_agg(c.channel, c.connection_name) into v_connections
  from conveyor.notification_channels as c where c.tenant_id = p_tenant_id;
  v_recipient := case
    when v_connections is not null then conveyor.notification_recipient(p_tenant_id, p_user_id)
    else '{"timezone": "UTC"}'
  end;
  v_prefs := conveyor.effective_notification_preferences(p_tenant_id, p_user_id, v_spec ->> 'category');
  v_decisions := case
    -- in-app only, and the defaults: what the rule gives the defaults for in-app
    when v_connections is null and v_prefs = conveyor.default_notification_preferences()
      then '{"in_app": {"action": "send"}}'::jsonb
    else conveyor.resolve_notification_channels(
      v_prefs, v_spec ->> 'category', coalesce(v_spec ->> 'priority', 'normal'), v_recipient ->> 'timezone', now()
    )
  end;

  insert into conveyor.notifications (
    tenant_id, user_id, category, type, priority, title, message, entity_type, entity_id, action_url,
    action_label, group_key, expires_at, execution_id, step_id, archived_at
  )
  values (
    p_tenant_id, p_user_id, v_spec ->> 'category',
    coalesce(v_spec ->> 'type', 'info'), coalesce(v_spec ->> 'priority', 'normal'), v_spec ->> 'title',
    coalesce(v_spec ->> 'message', ''), v_spec ->> 'entity_type', v_spec ->> 'entity_id', v_spec ->> 'action_url',
    v_spec ->> 'action_label', v_spec ->> 'group_key',
    now() + conveyor.parse_duration(v_spec ->> 'expires_in'), p_execution_id, p_step_id,
    case when v_decisions #>> '{in_app,action}' = 'drop' then now() end
  )
  returning * into v_row;
  v_id := v_row.notification_id;

  -- the content of each channel that is sent or held: the template's, or the in-app text
  foreach v_channel in array array['email', 'sms'] loop
    continue when v_connections is null or v_decisions #>> array[v_channel, 'action'] not in ('send', 'hold');
    v_content := v_content || jsonb_build_object(v_channel, case
      when v_doc is not null and v_doc ? v_channel
        then conveyor.render_notification_part(v_doc, v_slug, v_channel, v_data, p_where)
      when v_doc is not null then null
      when v_channel = 'email' then jsonb_build_object(
        'subject', v_row.title,
        'text', concat_ws(e'\n\n', nullif(v_row.message, ''), v_row.action_url))
      else jsonb_build_object('body', concat_ws(': ', v_row.title, nullif(v_row.message, '')))
    end);
  end loop;
  if v_connections is not null then
    perform conveyor.plan_deliveries(v_row, v_decisions, jsonb_strip_nulls(v_content), v_recipient, v_connections);
  end if;

  if v_row.archived_at is null then
    perform pg_catalog.pg_notify('conveyor_notifications', jsonb_build_object(
      'tenant', p_tenant_id, 'user', p_user_id, 'id', v_id
    )::text);
  end if;
  return v_id;
end;
$$;

-- The notify step's recipients: "to" rendered, a user id or a list of them (at most the
-- setting conveyor.max_notify_recipients, 100), each written in the step's transaction.
create or replace function conveyor.notify_from_step(p_exec conveyor.executions, p_step_id text, p_input jsonb)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_where text := format('step "%s".notify', p_step_id);
  v_max bigint := conveyor.limit_setting('max_notify_recipients', 100);
  v_to jsonb := p_input -> 'to';
  v_ids jsonb := '[]';
  v_user jsonb;
begin
  if jsonb_typeof(v_to) in ('string', 'number') then
    v_to := jsonb_build_array(v_to);
  elsif jsonb_typeof(v_to) is distinct from 'array' or jsonb_array_length(v_to) = 0 then
    raise exception using errcode = '22023',
      message = format('%s.to: expected a user id or a non-empty list of user ids (got %s)', v_where,
        coalesce(v_to::text, 'nothing'));
  end if;
  if jsonb_array_length(v_to) > v_max then
    raise exception using errcode = '54000',
      message = format('%s.to: %s recipients, at most %s may be notified by one step', v_where,
        jsonb_array_length(v_to), v_max),
      hint = 'the limit is the setting conveyor.max_notify_recipients';
  end if;
  for v_user in select e from jsonb_array_elements(v_to) as e loop
    if jsonb_typeof(v_user) not in ('string', 'number') then
      raise exception using errcode = '22023',
        message = format('%s.to: a recipient must be a user id, not %s', v_where, v_user::text);
    end if;
    v_ids := v_ids || to_jsonb(conveyor.insert_notification(
      p_exec.tenant_id, v_user #>> '{}', p_input - 'to', v_where, p_exec.execution_id, p_step_id
    ));
  end loop;
  return jsonb_build_object('notification_ids', v_ids);
end;
$$;

-- A notification of p_user_id from the platform's own code; its id.
create or replace function conveyor.notify_user(p_tenant_id text, p_user_id text, p_notification jsonb)
returns bigint
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform conveyor.require_tenant(p_tenant_id);
  if not exists (select from conveyor.tenants as t where t.tenant_id = p_tenant_id) then
    raise exception using errcode = '22023', message = format('unknown tenant %L', p_tenant_id);
  end if;
  return conveyor.insert_notification(p_tenant_id, p_user_id, p_notification, 'conveyor.notify_user');
end;
$$;

-- The user argument of the reading functions: required.
create or replace function conveyor.require_notification_user(p_user_id text)
returns void
language plpgsql
immutable
set search_path = ''
as $$
begin
  if p_user_id is null or btrim(p_user_id) = '' then
    raise exception using errcode = '22023', message = 'a user id is required',
      hint = 'Pass the user whose notifications these are (the user the platform has authenticated).';
  end if;
end;
$$;

-- A user's notifications, newest first: not archived, not expired (p_unread_only: nor
-- read); unread_count is the user's unread ones in all, the same on every row.
create or replace function conveyor.list_notifications(
  p_tenant_id text,
  p_user_id text,
  p_unread_only boolean default false,
  p_limit integer default 50
) returns table (
  id bigint,
  category text,
  type text,
  priority text,
  title text,
  message text,
  entity_type text,
  entity_id text,
  action_url text,
  action_label text,
  group_key text,
  created_at timestamptz,
  read_at timestamptz,
  expires_at timestamptz,
  execution_id bigint,
  unread_count bigint
)
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_unread bigint;
begin
  perform conveyor.require_tenant(p_tenant_id);
  perform conveyor.require_notification_user(p_user_id);
  if p_limit is null or p_limit < 1 or p_limit > 500 then
    raise exception using errcode = '22023',
      message = format('p_limit: %s is not a number of notifications (1 to 500)', coalesce(p_limit::text, 'null'));
  end if;
  select count(*) into v_unread
  from conveyor.notifications as n
  where n.tenant_id = p_tenant_id and n.user_id = p_user_id and n.read_at is null and n.archived_at is null
    and (n.expires_at is null or n.expires_at > now());
  return query
  select
    n.notification_id, n.category, n.type, n.priority, n.title, n.message, n.entity_type, n.entity_id,
    n.action_url, n.action_label, n.group_key, n.created_at, n.read_at, n.expires_at, n.execution_id, v_unread
  from conveyor.notifications as n
  where n.tenant_id = p_tenant_id and n.user_id = p_user_id and n.archived_at is null
    and (n.expires_at is null or n.expires_at > now())
    and (not coalesce(p_unread_only, false) or n.read_at is null)
  order by n.notification_id desc
  limit p_limit;
end;
$$;

-- Marks one of the user's notifications 'read', 'unread' or 'archived' (marking it as it
-- already is changes nothing); its read_at and archived_at after.
create or replace function conveyor.mark_notification(
  p_tenant_id text,
  p_user_id text,
  p_notification_id bigint,
  p_state text
) returns table (read_at timestamptz, archived_at timestamptz)
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform conveyor.require_tenant(p_tenant_id);
  perform conveyor.require_notification_user(p_user_id);
  if p_state is null or p_state not in ('read', 'unread', 'archived') then
    raise exception using errcode = '22023',
      message = format('p_state: %L is not a notification state (read, unread or archived)', p_state);
  end if;
  return query
  update conveyor.notifications as n
  set
    read_at = case p_state when 'read' then coalesce(n.read_at, now()) when 'unread' then null else n.read_at end,
    archived_at = case when p_state = 'archived' then coalesce(n.archived_at, now()) else n.archived_at end
  where n.tenant_id = p_tenant_id and n.user_id = p_user_id and n.notification_id = p_notification_id
  returning n.read_at, n.archived_at;
  if not found then
    raise exception using errcode = 'P0002',
      message = format('notification %s is not a notification of user %L in tenant %L',
        coalesce(p_notification_id::text, 'null'), p_user_id, p_tenant_id);
  end if;
end;
$$;

-- Marks every unread notification of the user read; how many it marked.
create or replace function conveyor.mark_all_read(p_tenant_id text, p_user_id text)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_count integer;
begin
  perform conveyor.require_tenant(p_tenant_id);
  perform conveyor.require_notification_user(p_user_id);
  update conveyor.notifications as n
  set read_at = now()
  where n.tenant_id = p_tenant_id and n.user_id = p_user_id and n.read_at is null and n.archived_at is null;
  get diagnostics v_count = row_count;
  return v_count;
end;
$$;
