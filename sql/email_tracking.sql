-- Email delivery tracking (docs/email-tracking.md): the row a successful email.send step
-- leaves in conveyor.email_messages (conveyor.record_email_sent, from the write-back), and
-- the provider's events recorded against it (conveyor.record_email_event: webhooks,
-- replies, unsubscribes), each re-emitted as an engine event email.message.<kind>.
--
-- Every UPDATE of email_messages is made by record_email_event, so a trigger on the table
-- (campaign counters, keyed by tags->>'campaign_id') sees each change once.

-- The most tags a step carries, and the longest tag value (rendered values are cut to it).
create or replace function conveyor.email_tag_limits()
returns jsonb
language sql
immutable
parallel safe
set search_path = ''
as $$
  select '{"max_tags": 20, "max_value_chars": 200}'::jsonb;
$$;

-- An email.send step's `with.tags` ({"campaign_id": "{{trigger.payload.campaign}}"}) and
-- `with.list_unsubscribe` (true | false), checked at publish.
create or replace function conveyor.email_step_errors(p_with jsonb, p_path text)
returns setof text
language plpgsql
immutable
set search_path = ''
as $$
declare
  v_tags jsonb := p_with -> 'tags';
  v_max integer := (conveyor.email_tag_limits() ->> 'max_tags')::integer;
  v_chars integer := (conveyor.email_tag_limits() ->> 'max_value_chars')::integer;
begin
  if p_with ? 'list_unsubscribe' and jsonb_typeof(p_with -> 'list_unsubscribe') <> 'boolean' then
    return next format('%s.list_unsubscribe: expected true or false (got %s)', p_path, (p_with -> 'list_unsubscribe')::text);
  end if;
  if not p_with ? 'tags' then
    return;
  end if;
  if jsonb_typeof(v_tags) <> 'object' then
    return next format('%s.tags: expected an object of tag names and text values (got %s)', p_path, v_tags::text);
    return;
  end if;
  if (select count(*) from jsonb_object_keys(v_tags)) > v_max then
    return next format(
      '%s.tags: %s tags, at most %s allowed', p_path, (select count(*) from jsonb_object_keys(v_tags)), v_max
    );
  end if;
  return query
  select case
    when t.key !~ '^[A-Za-z_][A-Za-z0-9_]{0,63}$' then
      format('%s.tags.%s: a tag name is letters, digits and _ (at most 64, not starting with a digit)', p_path, t.key)
    when jsonb_typeof(t.value) <> 'string' then
      format('%s.tags.%s: expected text or a template (got %s)', p_path, t.key, t.value::text)
    else format('%s.tags.%s: longer than %s characters', p_path, t.key, v_chars)
  end
  from jsonb_each(v_tags) as t (key, value)
  where t.key !~ '^[A-Za-z_][A-Za-z0-9_]{0,63}$'
    or jsonb_typeof(t.value) <> 'string'
    or length(t.value #>> '{}') > v_chars
  order by t.key;
end;
$$;

-- The message a successful email.send step sent (p_input its rendered `with`, p_output
-- the action's output), recorded in the write-back's transaction. One row per message:
-- to_address is its first accepted recipient. An output without a message id (a skipped
-- send) records nothing; a redelivered result (same Message-ID) records nothing again.
create or replace function conveyor.record_email_sent(
  p_tenant_id text, p_execution_id bigint, p_step_id text, p_connection text, p_input jsonb, p_output jsonb
) returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_chars integer := (conveyor.email_tag_limits() ->> 'max_value_chars')::integer;
  v_to text;
begin
  if p_output ->> 'message_id' is null then
    return;
  end if;
  v_to := coalesce(
    p_output -> 'accepted' ->> 0,
    case jsonb_typeof(p_input -> 'to') when 'array' then p_input -> 'to' ->> 0 else p_input ->> 'to' end,
    ''
  );
  insert into conveyor.email_messages (
    tenant_id, execution_id, step_key, connection_slug, to_address, subject, message_id, provider_message_id, tags,
    unsubscribe_token
  )
  values (
    p_tenant_id, p_execution_id, p_step_id, p_connection, left(v_to, 320), left(p_input ->> 'subject', 1000),
    p_output ->> 'message_id', left(p_output ->> 'provider_message_id', 200),
    coalesce((
      select jsonb_object_agg(t.key, left(coalesce(t.value #>> '{}', ''), v_chars))
      from (
        select t.key, t.value from jsonb_each(p_input -> 'tags') as t (key, value)
        where jsonb_typeof(p_input -> 'tags') = 'object'
        order by t.key
        limit (conveyor.email_tag_limits() ->> 'max_tags')::integer
      ) as t
    ), '{}'),
    case when length(p_output ->> 'unsubscribe_token') >= 32 then p_output ->> 'unsubscribe_token' end
  )
  on conflict do nothing;
end;
$$;

-- The message p_ref names for the tenant (locked): its provider id, its Message-ID (with
-- or without the angle brackets), else the Message-ID p_details carries.
create or replace function conveyor.find_email_message(p_tenant_id text, p_ref text, p_details jsonb)
returns conveyor.email_messages
language plpgsql
set search_path = ''
as $$
declare
  v_row conveyor.email_messages;
  v_ids text[] := array[p_ref, '<' || p_ref || '>', p_details ->> 'message_id'];
begin
  select m.* into v_row from conveyor.email_messages as m
  where m.tenant_id = p_tenant_id and m.provider_message_id = p_ref
  order by m.id limit 1
  for update;
  if v_row.id is null then
    select m.* into v_row from conveyor.email_messages as m
    where m.tenant_id = p_tenant_id and m.message_id = any(v_ids)
    order by m.id limit 1
    for update;
  end if;
  return v_row;
end;
$$;

-- Records one provider event of a message: p_kind delivered | opened | clicked | bounced |
-- complained | replied | unsubscribed; p_message_ref its provider id or Message-ID;
-- p_details what the provider said (event_id: its id, for idempotency; provider_message_id;
-- reason and bounce_type for a bounce; url for a click). Updates the row and emits
-- email.message.<kind> with {message_id, provider_message_id, to, tags, execution_id,
-- details}. Returns {"outcome": "recorded", "event_id"} | {"outcome": "duplicate"} (the
-- event id, or the same event, was recorded before: nothing changes, nothing is emitted) |
-- {"outcome": "unmatched"} (no such message: the webhooks answer 202, providers report
-- mail sent by other means too). Unsubscribes, complaints and hard bounces also suppress
-- the address for list_unsubscribe steps (conveyor.email_suppressions).
create or replace function conveyor.record_email_event(
  p_tenant_id text, p_message_ref text, p_kind text, p_occurred_at timestamptz, p_details jsonb default '{}'
) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_row conveyor.email_messages;
  v_details jsonb := coalesce(p_details, '{}');
  v_at timestamptz := coalesce(p_occurred_at, now());
  v_key text;
  v_event_id bigint;
  v_hard boolean;
begin
  perform conveyor.require_tenant(p_tenant_id);
  if p_kind is null or p_kind not in ('delivered', 'opened', 'clicked', 'bounced', 'complained', 'replied', 'unsubscribed')
  then
    raise exception using
      errcode = '22023',
      message = format('record_email_event: unknown kind %L', p_kind),
      hint = 'One of delivered, opened, clicked, bounced, complained, replied, unsubscribed.';
  end if;
  if jsonb_typeof(v_details) <> 'object' or pg_catalog.pg_column_size(v_details) > 65536 then
    raise exception using
      errcode = '22023',
      message = 'record_email_event: p_details must be a JSON object of at most 64 kB';
  end if;
  if p_message_ref is null or p_message_ref = '' then
    raise exception using errcode = '22023', message = 'record_email_event: p_message_ref is required';
  end if;

  v_row := conveyor.find_email_message(p_tenant_id, p_message_ref, v_details);
  if v_row.id is null then
    return jsonb_build_object(
      'outcome', 'unmatched',
      'message', format('no email message %s for tenant %s', p_message_ref, p_tenant_id)
    );
  end if;

  -- the provider's event id, else the event itself: a redelivery records nothing
  v_key := coalesce(
    'id:' || (v_details ->> 'event_id'),
    'ev:' || md5(v_row.id::text || '|' || p_kind || '|' || v_at::text || '|' || v_details::text)
  );
  insert into conveyor.email_events (tenant_id, event_key, email_message_id, kind, occurred_at)
  values (p_tenant_id, v_key, v_row.id, p_kind, v_at)
  on conflict do nothing;
  if not found then
    return jsonb_build_object('outcome', 'duplicate', 'email_message_id', v_row.id);
  end if;

  v_hard := p_kind = 'bounced' and coalesce(v_details ->> 'bounce_type', 'hard') not in ('soft', 'transient');
  update conveyor.email_messages as m
  set
    status = case
      when p_kind in ('bounced', 'complained') then p_kind
      when m.status = 'sent' and p_kind in ('delivered', 'opened', 'clicked', 'replied') then 'delivered'
      else m.status
    end,
    provider_message_id = coalesce(m.provider_message_id, v_details ->> 'provider_message_id'),
    opened_count = m.opened_count + (p_kind = 'opened')::integer,
    first_opened_at = case when p_kind = 'opened' then coalesce(m.first_opened_at, v_at) else m.first_opened_at end,
    clicked_count = m.clicked_count + (p_kind = 'clicked')::integer,
    first_clicked_at = case when p_kind = 'clicked' then coalesce(m.first_clicked_at, v_at) else m.first_clicked_at end,
    replied_at = case when p_kind = 'replied' then coalesce(m.replied_at, v_at) else m.replied_at end,
    unsubscribed_at = case when p_kind = 'unsubscribed' then coalesce(m.unsubscribed_at, v_at) else m.unsubscribed_at end,
    bounce_reason = case when p_kind = 'bounced' then left(v_details ->> 'reason', 1000) else m.bounce_reason end,
    updated_at = now()
  where m.id = v_row.id
  returning m.* into v_row;

  if p_kind in ('unsubscribed', 'complained') or v_hard then
    insert into conveyor.email_suppressions (tenant_id, address, reason, email_message_id)
    values (p_tenant_id, lower(v_row.to_address), p_kind, v_row.id)
    on conflict do nothing;
  end if;

  v_event_id := conveyor.emit(
    p_tenant_id, 'email.message.' || p_kind,
    jsonb_build_object(
      'email_message_id', v_row.id, 'message_id', v_row.message_id, 'provider_message_id', v_row.provider_message_id,
      'to', v_row.to_address, 'tags', v_row.tags, 'execution_id', v_row.execution_id, 'step_key', v_row.step_key,
      'occurred_at', v_at, 'details', v_details
    ),
    'email_message', v_row.id::text, null, 'email'
  );
  return jsonb_build_object('outcome', 'recorded', 'email_message_id', v_row.id, 'event_id', v_event_id);
end;
$$;

-- Why list_unsubscribe steps may not mail p_address (unsubscribed, complained, bounced,
-- manual), or null when they may.
create or replace function conveyor.email_suppressed(p_tenant_id text, p_address text)
returns text
language sql
stable
security definer
set search_path = ''
as $$
  select s.reason from conveyor.email_suppressions as s
  where s.tenant_id = p_tenant_id and s.address = lower(p_address);
$$;

revoke all on function conveyor.record_email_sent(text, bigint, text, text, jsonb, jsonb) from public;
revoke all on function conveyor.find_email_message(text, text, jsonb) from public;

-- The output of a list_unsubscribe email.send step that is skipped, not sent, because a
-- recipient (to, cc, bcc of p_input) is suppressed; null when none is.
create or replace function conveyor.email_skip(p_tenant_id text, p_input jsonb)
returns jsonb
language sql
stable
security definer
set search_path = ''
as $$
  select jsonb_build_object(
    'skipped', true, 'reason', 'suppressed', 'suppressed', jsonb_object_agg(s.address, s.reason),
    'message', 'suppressed recipient(s) ' || string_agg(s.address || ' (' || s.reason || ')', ', ' order by s.address)
  )
  from conveyor.email_suppressions as s
  where s.tenant_id = p_tenant_id
    and s.address = any(array(
      select lower(a.value #>> '{}')
      from unnest(array['to', 'cc', 'bcc']) as f (name),
        jsonb_array_elements(case jsonb_typeof(p_input -> f.name)
          when 'array' then p_input -> f.name when 'string' then jsonb_build_array(p_input -> f.name) else '[]' end
        ) as a (value)
      limit 100
    ))
  having count(*) > 0;
$$;

-- A reply to a message we sent: p_in_reply_to and p_references (the inbound email's
-- headers) name its Message-ID. Recorded as record_email_event(..., 'replied') against
-- the newest message either names (References is searched newest first, at most 50 ids).
create or replace function conveyor.record_email_reply(
  p_tenant_id text, p_in_reply_to text, p_references text default null, p_details jsonb default '{}'
) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_ids text[];
  v_match text;
begin
  perform conveyor.require_tenant(p_tenant_id);
  v_ids := array(
    select m[1]
    from regexp_matches(left(coalesce(p_in_reply_to, '') || ' ' || coalesce(p_references, ''), 20000), '(<[^<>\s]+>)', 'g')
      with ordinality as x (m, n)
    order by (x.n = 1 and p_in_reply_to is not null) desc, x.n desc
    limit 50
  );
  select i.id into v_match
  from unnest(v_ids) with ordinality as i (id, n)
  where exists (select from conveyor.email_messages as m where m.tenant_id = p_tenant_id and m.message_id = i.id)
  order by i.n
  limit 1;
  if v_match is null then
    return jsonb_build_object('outcome', 'unmatched', 'message', 'In-Reply-To / References name no message we sent');
  end if;
  return conveyor.record_email_event(
    p_tenant_id, v_match, 'replied', now(), coalesce(p_details, '{}') || jsonb_build_object('in_reply_to', v_match)
  );
end;
$$;
