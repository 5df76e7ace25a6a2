-- In-app notifications (docs/notifications.md): one row per recipient, written by the
-- notify step in its execution's transaction (sql/steps/notify.sql) or by
-- conveyor.notify_user, read and marked by the platform through sql/notifications.sql.
-- Email / SMS channels, templates and preferences come later; this is the in-app store.

create table conveyor.notifications (
  tenant_id text not null,
  notification_id bigint generated always as identity primary key,
  -- the platform's user id, within the tenant
  user_id text not null check (user_id <> ''),
  category text not null default 'general',
  type text not null default 'info'
  check (type in ('info', 'success', 'warning', 'error', 'action_required')),
  priority text not null default 'normal' check (priority in ('low', 'normal', 'high', 'critical')),
  title text not null,
  message text not null default '',
  entity_type text,
  entity_id text,
  action_url text,
  action_label text,
  -- notifications with the same key belong together (the console groups them)
  group_key text,
  -- past this time the notification is no longer listed
  expires_at timestamptz,
  created_at timestamptz not null default now(),
  read_at timestamptz,
  archived_at timestamptz,
  -- the execution and step that sent it (null: sent by conveyor.notify_user directly);
  -- no foreign key: a notification outlives the execution's retention
  execution_id bigint,
  step_id text
);

-- A user's list, newest first, and its unread count: the rows not archived.
create index notifications_user_idx on conveyor.notifications (tenant_id, user_id, notification_id desc)
where archived_at is null;
create index notifications_unread_idx on conveyor.notifications (tenant_id, user_id)
where read_at is null and archived_at is null;

alter table conveyor.notifications enable row level security;
alter table conveyor.notifications force row level security;
create policy notifications_isolation on conveyor.notifications
using (tenant_id = (select conveyor.current_tenant()));

grant select on conveyor.notifications to conveyor_app;
grant select, insert, update, delete on conveyor.notifications to conveyor_service;

alter table conveyor.workflow_steps drop constraint workflow_steps_kind_check;
alter table conveyor.workflow_steps add constraint workflow_steps_kind_check
check (kind in (
  'action', 'condition', 'switch', 'set_variable', 'transform', 'stop', 'emit', 'data', 'delay', 'wait_for_event',
  'wait_until', 'split', 'parallel', 'for_each', 'call', 'notify'
));
