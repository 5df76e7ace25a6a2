-- Notification recipients (docs/notifications.md#recipients): a workflow names a platform
-- user by id; the user's email address, phone number and time zone come from the
-- registered user entity (conveyor.notification_users over conveyor.entities), read with
-- dynamic SQL, tenant-scoped, identifiers quoted.

-- Registers which entity holds the platform's users and which of its columns hold the
-- email address, phone number and time zone (each may be null: that channel has no
-- address, the time zone is the tenant's). The platform operator's call (service role).
create or replace function conveyor.register_notification_users(
  p_entity text, p_email_column name, p_phone_column name default null, p_timezone_column name default null
)
returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_entity conveyor.entities;
  v_column name;
begin
  select e.* into v_entity from conveyor.entities as e where e.entity = p_entity;
  if not found then
    raise exception using errcode = '22023',
      message = format('register_notification_users: unknown entity %L', p_entity),
      hint = 'register the platform''s user table first: `conveyor entities add ENTITY TABLE`';
  end if;
  foreach v_column in array array[p_email_column, p_phone_column, p_timezone_column] loop
    continue when v_column is null;
    if not exists (
      select from pg_catalog.pg_attribute as a
      where a.attrelid = v_entity.table_name and a.attname = v_column and a.attnum > 0 and not a.attisdropped
    ) then
      raise exception using errcode = '22023',
        message = format('register_notification_users: entity %L (table %s) has no column %I', p_entity,
          v_entity.table_name, v_column);
    end if;
  end loop;
  insert into conveyor.notification_users as u (singleton, entity, email_column, phone_column, timezone_column)
  values (true, p_entity, p_email_column, p_phone_column, p_timezone_column)
  on conflict (singleton) do update set
    entity = excluded.entity, email_column = excluded.email_column, phone_column = excluded.phone_column,
    timezone_column = excluded.timezone_column, updated_at = now();
end;
$$;

-- A user of p_tenant_id: {"found": bool, "email", "phone", "timezone"} from the registered
-- user entity; the time zone falls back to the tenant's (then UTC). No entity
-- registered, or no such user: found false, no addresses.
create or replace function conveyor.notification_recipient(p_tenant_id text, p_user_id text)
returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_users conveyor.notification_users;
  v_entity conveyor.entities;
  v_tenant_type text;
  v_id_type text;
  v_email text;
  v_phone text;
  v_timezone text;
  v_tenant_tz text;
  v_found boolean := false;
  v_rows bigint;
begin
  select t.timezone into v_tenant_tz from conveyor.tenants as t where t.tenant_id = p_tenant_id;
  select u.* into v_users from conveyor.notification_users as u;
  if found then
    select e.* into v_entity from conveyor.entities as e where e.entity = v_users.entity;
    select pg_catalog.format_type(a.atttypid, a.atttypmod) into v_tenant_type
    from pg_catalog.pg_attribute as a where a.attrelid = v_entity.table_name and a.attname = v_entity.tenant_column;
    select pg_catalog.format_type(a.atttypid, a.atttypmod) into v_id_type
    from pg_catalog.pg_attribute as a where a.attrelid = v_entity.table_name and a.attname = v_entity.id_column;
    begin
      execute format(
        'select %s::text as email, %s::text as phone, %s::text as timezone from %s as t where t.%I = $1::%s and t.%I = $2::%s',
        coalesce('t.' || quote_ident(v_users.email_column), 'null'),
        coalesce('t.' || quote_ident(v_users.phone_column), 'null'),
        coalesce('t.' || quote_ident(v_users.timezone_column), 'null'),
        v_entity.table_name, v_entity.tenant_column, v_tenant_type, v_entity.id_column, v_id_type
      ) into v_email, v_phone, v_timezone using p_tenant_id, p_user_id;
      get diagnostics v_rows = row_count;  -- (execute does not set found)
      v_found := v_rows > 0;
    exception when invalid_text_representation then
      v_found := false;  -- an id that is no value of the id column's type names no user
    end;
  end if;
  if not v_found then
    return jsonb_build_object('found', false, 'timezone', coalesce(v_tenant_tz, 'UTC'));
  end if;
  -- a time zone the database does not know is the tenant's
  begin
    perform pg_catalog.timezone(v_timezone, pg_catalog.now());
  exception when others then
    v_timezone := null;
  end;
  return jsonb_build_object(
    'found', true, 'email', nullif(btrim(v_email), ''), 'phone', nullif(btrim(v_phone), ''),
    'timezone', coalesce(nullif(v_timezone, ''), v_tenant_tz, 'UTC')
  );
end;
$$;

revoke all on function conveyor.register_notification_users(text, name, name, name) from public;
revoke all on function conveyor.notification_recipient(text, text) from public;
