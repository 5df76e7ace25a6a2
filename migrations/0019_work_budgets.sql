-- Later: 0021_verified_tenant.sql rewrites the policies below to compare tenant_id with
-- (select conveyor.current_tenant()), the tenant conveyor.set_tenant verified, not the
-- setting conveyor.tenant_id.
-- 0026_tenant_budget_checks.sql adds tenant_event_rates.near_budget.

-- Work budgets (docs/limits.md, "Event chains, executions and tenants"): what one event
-- chain and one tenant may start, counted in the transactions that spend them.

-- The platform event an emitted event descends from (null: the event is its chain's root).
-- Every event a workflow emits carries its root, so a chain's breadth is counted per root,
-- not only its depth.
alter table conveyor.events add column root_event_id bigint;

-- An execution's emitted events, counted against its per-execution emit budget. Partial:
-- platform events (caused by no execution) add nothing to it.
create index events_caused_by_idx on conveyor.events (caused_by_execution_id)
where caused_by_execution_id is not null;

-- What each event chain has spent: the events its executions emitted and the executions
-- its emitted events started. One row per root that emitted anything.
create table conveyor.event_chains (
  root_event_id bigint primary key,
  tenant_id text not null,
  events integer not null default 0 check (events >= 0),
  executions integer not null default 0 check (executions >= 0),
  updated_at timestamptz not null default now()
);
create index event_chains_updated_idx on conveyor.event_chains (updated_at);

-- Events dispatched per tenant and minute (the tenant's event rate budget), sharded by
-- the dispatching backend like workflow_stats (conveyor.stats_shard): concurrent
-- dispatchers of one tenant do not queue on one row's lock until they commit.
create table conveyor.tenant_event_rates (
  tenant_id text not null,
  minute timestamptz not null,
  shard smallint not null check (shard between 0 and 15),
  events integer not null check (events >= 0),
  primary key (tenant_id, minute, shard)
);

-- A tenant's active executions are read from its workflows' sharded counters
-- (started minus finished), by tenant.
create index workflow_stats_tenant_idx on conveyor.workflow_stats (tenant_id);

alter table conveyor.event_chains enable row level security;
alter table conveyor.event_chains force row level security;
alter table conveyor.tenant_event_rates enable row level security;
alter table conveyor.tenant_event_rates force row level security;
create policy event_chains_isolation on conveyor.event_chains
using (tenant_id = pg_catalog.current_setting('conveyor.tenant_id', true));
create policy tenant_event_rates_isolation on conveyor.tenant_event_rates
using (tenant_id = pg_catalog.current_setting('conveyor.tenant_id', true));

grant select on conveyor.event_chains, conveyor.tenant_event_rates to conveyor_app;
grant select, insert, update, delete on conveyor.event_chains, conveyor.tenant_event_rates
to conveyor_service;
