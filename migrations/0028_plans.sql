-- Plans and quotas (docs/plans.md): what a tenant's plan allows, and the counters that
-- let dispatch weigh executions per month without counting history.

-- A plan: its name and each limit; null is unlimited. Quota names in errors and in
-- conveyor.plan_usage are these column names.
create table conveyor.plans (
  name text primary key check (name <> ''),
  -- active workflows
  workflows integer check (workflows >= 0),
  -- executions started per calendar month in the tenant's time zone
  executions_per_month integer check (executions_per_month >= 0),
  steps_per_workflow integer check (steps_per_workflow >= 0),
  -- the longest delay or wait timeout a step may name
  longest_delay interval check (longest_delay >= interval '0'),
  connections integer check (connections >= 0),
  -- days of execution history kept (the tenant's retention_days, at most this)
  history_days integer check (history_days > 0),
  webhook_endpoints integer check (webhook_endpoints >= 0),
  -- active workflows with a schedule trigger
  scheduled_workflows integer check (scheduled_workflows >= 0),
  -- steps of kinds condition, switch and split
  conditional_branches boolean not null default true,
  -- steps of kinds parallel, for_each and call
  parallel_execution boolean not null default true,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

-- The EM-57 tiers, and 'standard': no limits, what every tenant had before plans (the
-- tenants' existing default; see docs/plans.md for why it stays the default).
insert into conveyor.plans (
  name, workflows, executions_per_month, steps_per_workflow, longest_delay, connections, history_days,
  webhook_endpoints, scheduled_workflows, conditional_branches, parallel_execution
)
values
('free', 3, 100, 5, '1 hour', 2, 7, 1, 0, false, false),
('pro', 25, 5000, 25, '7 days', 10, 30, 5, 5, true, false),
('enterprise', null, 50000, null, '30 days', null, 90, null, null, true, true),
('standard', null, null, null, null, null, null, null, null, true, true);

-- Plan names tenants carry already become plans without limits: upgrading changes
-- nothing a tenant may do until its platform assigns it a tier.
insert into conveyor.plans (name)
select distinct t.plan from conveyor.tenants as t
on conflict (name) do nothing;

alter table conveyor.tenants
add constraint tenants_plan_fkey foreign key (plan) references conveyor.plans (name) on update cascade;

-- Executions started per tenant and month (period_start: the first day of the month in the
-- tenant's time zone), sharded by the starting backend like workflow_stats
-- (conveyor.stats_shard): concurrent dispatchers of one tenant do not queue on one row.
-- Written in the transaction that starts the executions (conveyor.record_started).
create table conveyor.tenant_usage (
  tenant_id text not null,
  period_start date not null,
  shard smallint not null check (shard between 0 and 15),
  executions bigint not null default 0 check (executions >= 0),
  updated_at timestamptz not null default now(),
  primary key (tenant_id, period_start, shard)
);

alter table conveyor.tenant_usage enable row level security;
alter table conveyor.tenant_usage force row level security;
create policy tenant_usage_isolation on conveyor.tenant_usage
using (tenant_id = (select conveyor.current_tenant()));

-- Plans are the installation's catalogue, not a tenant's data: readable by the
-- application, written through conveyor.set_plan.
grant select on conveyor.plans to conveyor_app;
grant select, insert, update, delete on conveyor.plans to conveyor_service;
grant select on conveyor.tenant_usage to conveyor_app;
grant select, insert, update, delete on conveyor.tenant_usage to conveyor_service;
