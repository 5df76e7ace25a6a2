-- Notification delivery (docs/notifications.md): tenant templates, the platform's user
-- entity, per-user preferences, the tenant's channel connections, email / SMS deliveries
-- (sent through the action queue and the runner's email.send / sms.send) and digests.

-- Tenant overrides of notification templates (the system templates are code:
-- conveyor.system_notification_templates, sql/notification_templates.sql).
create table conveyor.notification_templates (
  tenant_id text not null references conveyor.tenants (tenant_id) on delete cascade,
  slug text not null check (slug ~ '^[a-z][a-z0-9_.-]{0,63}$'),
  -- {"variables", "category"?, "type"?, "priority"?, "in_app", "email"?, "sms"?}, checked at save
  document jsonb not null,
  updated_at timestamptz not null default now(),
  primary key (tenant_id, slug)
);

-- Which registered entity (conveyor.entities) holds the platform's users, and which of its
-- columns hold a user's email address, phone number and time zone. Platform-wide
-- configuration, not tenant data (one row).
create table conveyor.notification_users (
  singleton boolean primary key default true check (singleton),
  entity text not null references conveyor.entities (entity),
  email_column name,
  phone_column name,
  timezone_column name,
  updated_at timestamptz not null default now()
);

-- A user's preferences, per category ('*': every category the user has no row for, field
-- by field): {"channels", "frequency", "quiet_hours", "dnd_until", "email_unsubscribed",
-- "digest"}; checked by conveyor.notification_preference_errors.
create table conveyor.notification_preferences (
  tenant_id text not null references conveyor.tenants (tenant_id) on delete cascade,
  user_id text not null check (user_id <> ''),
  category text not null check (category <> ''),
  preferences jsonb not null,
  updated_at timestamptz not null default now(),
  primary key (tenant_id, user_id, category)
);

-- The connection (conveyor.connections, by name) that sends a tenant's notifications on a
-- channel; none: the channel is skipped with a recorded reason.
create table conveyor.notification_channels (
  tenant_id text not null references conveyor.tenants (tenant_id) on delete cascade,
  channel text not null check (channel in ('email', 'sms')),
  connection_name text not null,
  updated_at timestamptz not null default now(),
  primary key (tenant_id, channel)
);

-- A user's digest of one period: the items (deliveries in status 'digested') collected
-- until due_at, then one email (its delivery) listing every item.
create table conveyor.notification_digests (
  tenant_id text not null,
  digest_id bigint generated always as identity primary key,
  user_id text not null,
  frequency text not null check (frequency in ('hourly_digest', 'daily_digest', 'weekly_digest')),
  due_at timestamptz not null,
  status text not null default 'open' check (status in ('open', 'sent', 'dropped')),
  items integer not null default 0,
  -- the digest email's delivery, once composed
  delivery_id bigint,
  reason text,
  created_at timestamptz not null default now(),
  composed_at timestamptz,
  unique (tenant_id, user_id, frequency, due_at)
);

-- The due scan (conveyor.tick): open digests by due time
create index notification_digests_due_idx on conveyor.notification_digests (due_at) where status = 'open';

-- One email or SMS of a notification (or of a digest): its address, what it says
-- (rendered), and where it is. pending: to be queued; held: until due_at (quiet hours,
-- do-not-disturb); queued: its message is in conveyor_actions (msg_id); digested: an item
-- of digest_id; sent / failed / dropped (reason) are final.
create table conveyor.notification_deliveries (
  tenant_id text not null,
  delivery_id bigint generated always as identity primary key,
  -- no foreign keys: a delivery is history, kept whatever is pruned first
  notification_id bigint,
  digest_id bigint,
  user_id text not null,
  channel text not null check (channel in ('email', 'sms')),
  address text,
  status text not null check (status in ('pending', 'held', 'queued', 'digested', 'sent', 'failed', 'dropped')),
  reason text,
  due_at timestamptz,
  connection_name text,
  -- email: {"subject", "html"?, "text"?}; sms: {"body"}
  content jsonb,
  attempts integer not null default 0,
  msg_id bigint,
  output jsonb,
  error jsonb,
  created_at timestamptz not null default now(),
  finished_at timestamptz,
  check (notification_id is not null or digest_id is not null)
);

-- The due scan (conveyor.tick): held deliveries by due time
create index notification_deliveries_held_idx on conveyor.notification_deliveries (due_at) where status = 'held';
create index notification_deliveries_notification_idx on conveyor.notification_deliveries (notification_id);
create index notification_deliveries_digest_idx on conveyor.notification_deliveries (digest_id)
where digest_id is not null;

do $$
declare
  v_table text;
begin
  foreach v_table in array array[
    'notification_templates', 'notification_preferences', 'notification_channels', 'notification_digests',
    'notification_deliveries'
  ] loop
    execute format('alter table conveyor.%I enable row level security', v_table);
    execute format('alter table conveyor.%I force row level security', v_table);
    execute format(
      'create policy %I on conveyor.%I using (tenant_id = (select conveyor.current_tenant()))',
      v_table || '_isolation', v_table
    );
    execute format('grant select on conveyor.%I to conveyor_app', v_table);
    execute format('grant select, insert, update, delete on conveyor.%I to conveyor_service', v_table);
  end loop;
end;
$$;

grant select on conveyor.notification_users to conveyor_app;
grant select, insert, update, delete on conveyor.notification_users to conveyor_service;
