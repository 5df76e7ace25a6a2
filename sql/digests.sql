-- Notification digests (docs/notifications.md#digests): a user whose preference for a
-- category is a digest frequency gets that category's emails collected (deliveries in
-- status 'digested') into the digest of the period, one per user, frequency and due time;
-- when it falls due (conveyor.release_notifications, from the tick) one email lists
-- every item, rendered from the digest template. A digest exists only once it has an
-- item: with nothing to list, nothing is sent.

-- The most items one digest email lists (setting conveyor.max_digest_items, default 100);
-- the rest are counted in a last line.
create or replace function conveyor.max_digest_items()
returns integer
language plpgsql
stable
set search_path = ''
as $$
begin
  return conveyor.limit_setting('max_digest_items', 100)::integer;
end;
$$;

-- The open digest of a user's period (created with its first item); its id.
create or replace function conveyor.add_to_digest(
  p_tenant_id text, p_user_id text, p_frequency text, p_due_at timestamptz
)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  v_id bigint;
begin
  insert into conveyor.notification_digests as g (tenant_id, user_id, frequency, due_at, items)
  values (p_tenant_id, p_user_id, p_frequency, p_due_at, 1)
  on conflict (tenant_id, user_id, frequency, due_at) do update set items = g.items + 1
  returning g.digest_id into v_id;
  return v_id;
end;
$$;

-- A digest's email content from the tenant's (or the system) digest template: its items
-- (title, message, link = action_url) oldest first, each rendered with item_html (values
-- HTML-escaped) and item_text, at most conveyor.max_digest_items of them.
create or replace function conveyor.digest_content(p_digest conveyor.notification_digests)
returns jsonb
language plpgsql
stable
set search_path = ''
-- by the digest's index, whatever the tables' sizes when the plan was cached
set enable_seqscan = off
as $$
declare
  v_doc jsonb := conveyor.notification_template(p_digest.tenant_id, 'digest');
  v_max integer := conveyor.max_digest_items();
  v_where text := format('digest %s', p_digest.digest_id);
  v_html text[] := '{}';
  v_text text[] := '{}';
  v_item jsonb;
  v_count integer := 0;
  v_total integer;
begin
  select count(*) into v_total
  from conveyor.notification_deliveries as d
  where d.digest_id = p_digest.digest_id and d.status = 'digested';
  for v_item in
    select jsonb_build_object(
      'title', n.title, 'message', n.message, 'link', coalesce(n.action_url, ''), 'category', n.category,
      'created_at', n.created_at
    )
    from conveyor.notification_deliveries as d
    join conveyor.notifications as n on n.notification_id = d.notification_id
    where d.digest_id = p_digest.digest_id and d.status = 'digested'
    order by n.created_at, n.notification_id
    limit v_max
  loop
    v_count := v_count + 1;
    v_html := v_html || (conveyor.render_string(
      coalesce(v_doc #>> '{email,item_html}', '<li>{{item.title}}: {{item.message}}</li>'), '{}', v_where || ' item_html',
      v_item, true
    ) #>> '{}');
    v_text := v_text || (conveyor.render_string(
      coalesce(v_doc #>> '{email,item_text}', '- {{item.title}}: {{item.message}}' || chr(10)), '{}',
      v_where || ' item_text', v_item
    ) #>> '{}');
  end loop;
  if v_total > v_count then
    v_html := v_html || format('<li>and %s more</li>', v_total - v_count);
    v_text := v_text || format('and %s more', v_total - v_count);
  end if;
  if octet_length(array_to_string(v_html, '')) + octet_length(array_to_string(v_text, '')) > conveyor.max_rendered_bytes() then
    perform conveyor.render_too_large(v_where, octet_length(array_to_string(v_html, '')), 'digest');
  end if;
  return conveyor.render_notification_part(v_doc, 'digest', 'email', conveyor.notification_template_data(v_doc, 'digest',
    jsonb_build_object(
      'count', v_total, 'period', replace(p_digest.frequency, '_digest', ''),
      'items_html', array_to_string(v_html, ''), 'items_text', array_to_string(v_text, '')
    ), v_where), v_where);
end;
$$;

-- Composes a due digest: with items, one email delivery (queued now, or dropped with the
-- reason when the tenant has no email connection or the user no address); the digest is
-- then 'sent' (or 'dropped' with the reason). A digest whose items are gone sends nothing.
create or replace function conveyor.compose_digest(p_digest_id bigint)
returns bigint
language plpgsql
set search_path = ''
-- by the digest's index, whatever the tables' sizes when the plan was cached
set enable_seqscan = off
as $$
declare
  v_digest conveyor.notification_digests;
  v_connection text;
  v_address text;
  v_reason text;
  v_delivery bigint;
  v_content jsonb;
begin
  select g.* into v_digest from conveyor.notification_digests as g where g.digest_id = p_digest_id for update;
  if v_digest.status is distinct from 'open' then
    return null;
  end if;
  if not exists (
    select from conveyor.notification_deliveries as d where d.digest_id = p_digest_id and d.status = 'digested'
  ) then
    update conveyor.notification_digests as g set status = 'dropped', reason = 'nothing to send', composed_at = now()
    where g.digest_id = p_digest_id;
    return null;
  end if;
  select c.connection_name into v_connection
  from conveyor.notification_channels as c where c.tenant_id = v_digest.tenant_id and c.channel = 'email';
  v_address := conveyor.notification_recipient(v_digest.tenant_id, v_digest.user_id) ->> 'email';
  v_reason := conveyor.delivery_obstacle('email', v_connection, v_address);
  if v_reason is null then
    v_content := conveyor.digest_content(v_digest);
  end if;
  insert into conveyor.notification_deliveries (
    tenant_id, digest_id, user_id, channel, address, status, reason, connection_name, content, finished_at
  )
  values (
    v_digest.tenant_id, p_digest_id, v_digest.user_id, 'email', v_address,
    case when v_reason is null then 'pending' else 'dropped' end, v_reason, v_connection, v_content,
    case when v_reason is not null then now() end
  )
  returning delivery_id into v_delivery;
  perform conveyor.queue_deliveries(array[v_delivery]);
  update conveyor.notification_digests as g
  set status = case when v_reason is null then 'sent' else 'dropped' end, reason = v_reason, delivery_id = v_delivery,
    composed_at = now()
  where g.digest_id = p_digest_id;
  return v_delivery;
end;
$$;

revoke all on function conveyor.add_to_digest(text, text, text, timestamptz) from public;
revoke all on function conveyor.digest_content(conveyor.notification_digests) from public;
revoke all on function conveyor.compose_digest(bigint) from public;
