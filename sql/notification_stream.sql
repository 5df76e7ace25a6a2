-- What `conveyor serve`'s notification stream reads (runner/conveyor/serve/stream.py,
-- docs/notifications.md#the-stream): a user's notifications after the last one a client
-- has, in id order, and where the stream starts. Tenant-checked and one user's rows, like
-- the reading functions of sql/notifications.sql; the platform may poll with them too.

-- The user's notifications (not archived, not expired) with an id above p_after_id, or one
-- of p_also_ids (rows committed after a higher id was sent: ids are taken at insert, rows
-- become visible at commit), oldest first, at most p_limit (1 to 500); unread_count is the
-- user's unread ones in all, the same on every row.
create or replace function conveyor.notifications_after(
  p_tenant_id text,
  p_user_id text,
  p_after_id bigint,
  p_also_ids bigint[] default null,
  p_limit integer default 500
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
  if p_after_id is null or p_after_id < 0 then
    raise exception using errcode = '22023',
      message = format('p_after_id: %s is not a notification id (0 or more)', coalesce(p_after_id::text, 'null'));
  end if;
  if p_limit is null or p_limit < 1 or p_limit > 500 then
    raise exception using errcode = '22023',
      message = format('p_limit: %s is not a number of notifications (1 to 500)', coalesce(p_limit::text, 'null'));
  end if;
  if coalesce(cardinality(p_also_ids), 0) > 500 then
    raise exception using errcode = '54000',
      message = format('p_also_ids: %s ids, at most 500 may be asked for at once', cardinality(p_also_ids));
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
    and (n.notification_id > p_after_id or n.notification_id = any(coalesce(p_also_ids, '{}')))
  order by n.notification_id
  limit p_limit;
end;
$$;

-- Where a stream without Last-Event-ID starts: the user's newest notification id (0 when
-- none) and unread count.
create or replace function conveyor.notification_stream_start(p_tenant_id text, p_user_id text)
returns table (last_id bigint, unread_count bigint)
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  perform conveyor.require_tenant(p_tenant_id);
  perform conveyor.require_notification_user(p_user_id);
  return query
  select
    coalesce((
      select max(n.notification_id) from conveyor.notifications as n
      where n.tenant_id = p_tenant_id and n.user_id = p_user_id and n.archived_at is null
    ), 0)::bigint,
    (
      select count(*) from conveyor.notifications as n
      where n.tenant_id = p_tenant_id and n.user_id = p_user_id and n.read_at is null and n.archived_at is null
        and (n.expires_at is null or n.expires_at > now())
    );
end;
$$;
