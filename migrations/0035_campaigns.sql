-- Campaigns (docs/campaigns.md, sql/campaigns.sql): a campaign document compiles into a
-- generated workflow (slug "campaign-<slug>"); an enrollment is one execution of it, pinned
-- to the version current when it started. Counters are kept in the transaction of each
-- change (sql/campaign_stats.sql), never by scanning.

create table conveyor.campaigns (
  campaign_id bigint generated always as identity primary key,
  tenant_id text not null references conveyor.tenants (tenant_id),
  slug text not null check (slug ~ '^[a-z0-9][a-z0-9-]*$'),
  name text not null,
  audience text not null,
  workflow_id bigint not null references conveyor.workflows (workflow_id),
  current_version integer not null,
  -- a paused campaign takes no new enrollments and its enrollments are paused
  paused boolean not null default false,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, slug)
);

-- Each applied document, with the workflow version it compiled into.
create table conveyor.campaign_versions (
  campaign_id bigint not null references conveyor.campaigns (campaign_id) on delete cascade,
  version integer not null,
  tenant_id text not null references conveyor.tenants (tenant_id),
  document jsonb not null,
  workflow_version integer not null,
  created_at timestamptz not null default now(),
  primary key (campaign_id, version)
);

create table conveyor.campaign_enrollments (
  enrollment_id bigint generated always as identity primary key,
  tenant_id text not null references conveyor.tenants (tenant_id),
  campaign_id bigint not null references conveyor.campaigns (campaign_id) on delete cascade,
  version integer not null,
  entity_type text not null,
  entity_id text not null,
  execution_id bigint,
  status text not null default 'active'
  check (status in ('active', 'paused', 'completed', 'stopped', 'cancelled', 'failed')),
  stop_reason text,
  enrolled_at timestamptz not null default now(),
  finished_at timestamptz,
  sent integer not null default 0,
  delivered integer not null default 0,
  opened integer not null default 0,
  clicked integer not null default 0,
  replied integer not null default 0,
  bounced integer not null default 0,
  unsubscribed integer not null default 0
);

-- Never twice in the same campaign while active: concurrent enrollers of one contact meet
-- here (the second waits for the first to commit, then conflicts).
create unique index campaign_enrollments_active_idx on conveyor.campaign_enrollments (campaign_id, entity_id)
where status in ('active', 'paused');
create index campaign_enrollments_campaign_idx on conveyor.campaign_enrollments (campaign_id, enrollment_id);
create index campaign_enrollments_execution_idx on conveyor.campaign_enrollments (execution_id);

-- Counters per campaign (step_key '' and variant ''), step (variant '') and variant.
create table conveyor.campaign_stats (
  tenant_id text not null references conveyor.tenants (tenant_id),
  campaign_id bigint not null references conveyor.campaigns (campaign_id) on delete cascade,
  step_key text not null default '',
  variant text not null default '',
  enrolled bigint not null default 0,
  sent bigint not null default 0,
  delivered bigint not null default 0,
  opened bigint not null default 0,
  clicked bigint not null default 0,
  replied bigint not null default 0,
  bounced bigint not null default 0,
  complained bigint not null default 0,
  unsubscribed bigint not null default 0,
  completed bigint not null default 0,
  stopped bigint not null default 0,
  primary key (campaign_id, step_key, variant)
);

-- The tenant's send rate: sends reserved per key and minute (sql/steps/campaign.sql).
create table conveyor.campaign_send_slots (
  tenant_id text not null references conveyor.tenants (tenant_id),
  key text not null,
  minute timestamptz not null,
  used integer not null default 0,
  primary key (tenant_id, key, minute)
);

-- A/B winner decisions, with the figures they were made on.
create table conveyor.campaign_winners (
  campaign_id bigint not null references conveyor.campaigns (campaign_id) on delete cascade,
  step_key text not null,
  tenant_id text not null references conveyor.tenants (tenant_id),
  metric text not null,
  winner text not null,
  figures jsonb not null,
  decided_at timestamptz not null default now(),
  campaign_version integer not null,
  primary key (campaign_id, step_key)
);

alter table conveyor.campaigns enable row level security;
alter table conveyor.campaigns force row level security;
create policy campaigns_isolation on conveyor.campaigns using (tenant_id = (select conveyor.current_tenant()));
alter table conveyor.campaign_versions enable row level security;
alter table conveyor.campaign_versions force row level security;
create policy campaign_versions_isolation on conveyor.campaign_versions
using (tenant_id = (select conveyor.current_tenant()));
alter table conveyor.campaign_enrollments enable row level security;
alter table conveyor.campaign_enrollments force row level security;
create policy campaign_enrollments_isolation on conveyor.campaign_enrollments
using (tenant_id = (select conveyor.current_tenant()));
alter table conveyor.campaign_stats enable row level security;
alter table conveyor.campaign_stats force row level security;
create policy campaign_stats_isolation on conveyor.campaign_stats using (tenant_id = (select conveyor.current_tenant()));
alter table conveyor.campaign_send_slots enable row level security;
alter table conveyor.campaign_send_slots force row level security;
create policy campaign_send_slots_isolation on conveyor.campaign_send_slots
using (tenant_id = (select conveyor.current_tenant()));
alter table conveyor.campaign_winners enable row level security;
alter table conveyor.campaign_winners force row level security;
create policy campaign_winners_isolation on conveyor.campaign_winners
using (tenant_id = (select conveyor.current_tenant()));

grant select on conveyor.campaigns, conveyor.campaign_versions, conveyor.campaign_enrollments,
conveyor.campaign_stats, conveyor.campaign_send_slots, conveyor.campaign_winners to conveyor_app;
grant select, insert, update, delete on conveyor.campaigns, conveyor.campaign_versions,
conveyor.campaign_enrollments, conveyor.campaign_stats, conveyor.campaign_send_slots, conveyor.campaign_winners
to conveyor_service;

-- The campaign step kind (sql/steps/campaign.sql).
alter table conveyor.workflow_steps drop constraint workflow_steps_kind_check;
alter table conveyor.workflow_steps add constraint workflow_steps_kind_check
check (kind in (
  'action', 'condition', 'switch', 'set_variable', 'transform', 'stop', 'emit', 'data', 'delay', 'wait_for_event',
  'wait_until', 'split', 'parallel', 'for_each', 'call', 'notify', 'approval', 'campaign'
));
