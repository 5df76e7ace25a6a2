-- Later: 0021_verified_tenant.sql rewrites the policy below to compare tenant_id with
-- (select conveyor.current_tenant()), the tenant conveyor.set_tenant verified, not the
-- setting conveyor.tenant_id. 0019_work_budgets.sql adds events.root_event_id.

-- The event log: what platforms emit (conveyor.emit) and what watched tables capture.
-- An event is dispatched exactly once: dispatch claims pending rows with
-- `for update skip locked` and stamps dispatched_at in the same transaction that
-- creates the executions.
--
-- tenant_id has no foreign key to conveyor.tenants, on purpose: the event log is written
-- on the platform's write path (one row per captured row), and a foreign key costs one
-- extra index probe plus a row lock per event row, checked row by row (measured on a
-- 10,000-row insert: 47 ms of the capture's ~190 ms). Every writer checks the tenant
-- instead: capture skips rows of tenants conveyor.tenants does not know, emit() refuses
-- unknown tenants, the interpreter writes the tenant of its execution.
create table conveyor.events (
  event_id bigint generated always as identity primary key,
  tenant_id text not null,
  -- module.entity.action, e.g. crm.contact.created
  event_type text not null check (event_type ~ '^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$'),
  source text,
  entity_type text,
  entity_id text,
  payload jsonb not null default '{}',
  -- For table changes: the changed columns of an update (null otherwise).
  changed_columns text[],
  dedupe_key text,
  -- How many executions deep this event's causal chain is (0 for platform events).
  depth integer not null default 0 check (depth >= 0),
  caused_by_execution_id bigint,
  occurred_at timestamptz not null default now(),
  dispatched_at timestamptz
);

create index events_pending_idx on conveyor.events (event_id) where dispatched_at is null;
create unique index events_dedupe_key_idx on conveyor.events (tenant_id, dedupe_key)
where dedupe_key is not null;
create index events_tenant_time_idx on conveyor.events (tenant_id, occurred_at);

alter table conveyor.events enable row level security;
alter table conveyor.events force row level security;
create policy events_isolation on conveyor.events
using (tenant_id = pg_catalog.current_setting('conveyor.tenant_id', true));

grant select on conveyor.events to conveyor_app;
grant select, insert, update, delete on conveyor.events to conveyor_service;

-- Platform tables whose changes become events (managed by conveyor.watch / unwatch).
-- Platform-wide configuration, not tenant data: no tenant_id.
create table conveyor.watched_tables (
  table_name regclass primary key,
  module text not null check (module ~ '^[a-z][a-z0-9_]*$'),
  entity text not null check (entity ~ '^[a-z][a-z0-9_]*$'),
  tenant_column name not null,
  id_column name not null,
  created_at timestamptz not null default now()
);

-- Registered platform entities that data steps may read and change.
-- Platform-wide configuration, not tenant data: no tenant_id.
create table conveyor.entities (
  entity text primary key check (entity ~ '^[a-z][a-z0-9_]*$'),
  table_name regclass not null,
  id_column name not null,
  tenant_column name not null,
  -- Optional text[] column that add_tag / remove_tag change.
  tags_column name
);

grant select on conveyor.watched_tables, conveyor.entities to conveyor_app, conveyor_service;
