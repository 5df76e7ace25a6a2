-- Later: 0021_verified_tenant.sql rewrites the policies below to compare tenant_id with
-- (select conveyor.current_tenant()), the tenant conveyor.set_tenant verified, not the
-- setting conveyor.tenant_id.

-- Cron-triggered workflows. Each workflow has at most one schedule (its trigger).
-- A scheduled slot fires exactly once: schedule_firings' primary key (schedule, slot)
-- refuses a second firing whatever races (runners' ticks, pg_cron's tick).
create table conveyor.schedules (
  schedule_id bigint generated always as identity primary key,
  tenant_id text not null references conveyor.tenants (tenant_id),
  workflow_id bigint not null references conveyor.workflows (workflow_id) on delete cascade,
  cron text not null,
  timezone text not null default 'UTC',
  -- 'skip': a slot is skipped (and logged) while the previous execution still runs.
  overlap text not null default 'skip' check (overlap in ('skip', 'allow')),
  -- Disable the schedule after this many consecutive failed executions (null: never).
  max_consecutive_failures integer default 5 check (max_consecutive_failures > 0),
  active boolean not null default true,
  disabled_reason text,
  next_run_at timestamptz,
  last_slot timestamptz,
  last_execution_id bigint,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint schedules_one_per_workflow unique (workflow_id),
  constraint schedules_disabled_has_reason check (active or disabled_reason is not null)
);

create index schedules_due_idx on conveyor.schedules (next_run_at) where active;

create table conveyor.schedule_firings (
  schedule_id bigint not null references conveyor.schedules (schedule_id) on delete cascade,
  slot timestamptz not null,
  tenant_id text not null references conveyor.tenants (tenant_id),
  outcome text not null check (outcome in ('started', 'skipped_overlap')),
  execution_id bigint references conveyor.executions (execution_id) on delete set null,
  -- Slots between the previous firing and this one that were not run (caught up once).
  missed_slots integer not null default 0 check (missed_slots >= 0),
  fired_at timestamptz not null default now(),
  primary key (schedule_id, slot),
  constraint schedule_firings_started_has_execution check ((outcome = 'started') = (execution_id is not null))
);

create index schedule_firings_execution_idx on conveyor.schedule_firings (execution_id);

alter table conveyor.schedules enable row level security;
alter table conveyor.schedules force row level security;
alter table conveyor.schedule_firings enable row level security;
alter table conveyor.schedule_firings force row level security;

create policy schedules_isolation on conveyor.schedules
using (tenant_id = pg_catalog.current_setting('conveyor.tenant_id', true));
create policy schedule_firings_isolation on conveyor.schedule_firings
using (tenant_id = pg_catalog.current_setting('conveyor.tenant_id', true));

grant select on conveyor.schedules, conveyor.schedule_firings to conveyor_app;
grant select, insert, update, delete on conveyor.schedules, conveyor.schedule_firings to conveyor_service;
