-- Flow control of a workflow's executions (docs/flow-control.md, sql/flow_control.sql):
-- concurrency per key (at most N running per key, the rest queued in order), debounce (one
-- execution for a burst of events on a key, with the latest event) and throttle (at most N
-- executions per key and period, the rest refused and logged).

-- The workflow's settings.concurrency / debounce / throttle, compiled: null when it has
-- none of them, so dispatch looks at one column to know there is nothing to do.
alter table conveyor.workflow_versions add column flow jsonb;

-- The concurrency key an execution holds (or queues for) a slot under; null when its
-- workflow has no concurrency setting.
alter table conveyor.executions add column flow_key text;

-- 'slot': queued for a concurrency slot (resume_at set once it is admitted);
-- 'debounce': a debounced execution waiting for its burst to end (resume_at);
-- 'approval': a person's decision (sql/approvals.sql).
alter table conveyor.executions drop constraint executions_wait_kind_check;
alter table conveyor.executions add constraint executions_wait_kind_check
check (wait_kind in ('action', 'delay', 'event', 'children', 'turn', 'slot', 'debounce', 'approval'));

-- The slots taken per workflow and key. A row exists while some execution holds or
-- waits for one; every change is made under its row lock (dispatch, release, the tick).
create table conveyor.flow_slots (
  tenant_id text not null references conveyor.tenants (tenant_id),
  workflow_id bigint not null references conveyor.workflows (workflow_id) on delete cascade,
  key text not null,
  running integer not null default 0 check (running >= 0),
  primary key (workflow_id, key)
);

-- A key's queue, oldest first.
create index executions_flow_queue_idx on conveyor.executions (workflow_id, flow_key, execution_id)
where status = 'waiting' and wait_kind = 'slot';

-- Admitted executions and ended debounce periods are due like a delay (conveyor.resume_due),
-- from their own index, so that the delay scan's index and plan stay as they were.
create index executions_flow_due_idx on conveyor.executions (resume_at, execution_id)
where status = 'waiting' and wait_kind in ('slot', 'debounce') and resume_at is not null and paused_at is null;

-- The debounced execution waiting per workflow and key.
create table conveyor.flow_debounces (
  tenant_id text not null references conveyor.tenants (tenant_id),
  workflow_id bigint not null references conveyor.workflows (workflow_id) on delete cascade,
  key text not null,
  execution_id bigint not null,
  -- how many events the burst has had so far
  events integer not null default 1,
  primary key (workflow_id, key)
);

-- Executions started per workflow, key and throttle window (fixed windows of the period).
create table conveyor.flow_throttles (
  tenant_id text not null references conveyor.tenants (tenant_id),
  workflow_id bigint not null references conveyor.workflows (workflow_id) on delete cascade,
  key text not null,
  window_start timestamptz not null,
  started integer not null default 0,
  primary key (workflow_id, key, window_start)
);

alter table conveyor.flow_slots enable row level security;
alter table conveyor.flow_slots force row level security;
create policy flow_slots_isolation on conveyor.flow_slots using (tenant_id = (select conveyor.current_tenant()));
alter table conveyor.flow_debounces enable row level security;
alter table conveyor.flow_debounces force row level security;
create policy flow_debounces_isolation on conveyor.flow_debounces using (tenant_id = (select conveyor.current_tenant()));
alter table conveyor.flow_throttles enable row level security;
alter table conveyor.flow_throttles force row level security;
create policy flow_throttles_isolation on conveyor.flow_throttles using (tenant_id = (select conveyor.current_tenant()));

grant select on conveyor.flow_slots, conveyor.flow_debounces, conveyor.flow_throttles to conveyor_app;
grant select, insert, update, delete on conveyor.flow_slots, conveyor.flow_debounces, conveyor.flow_throttles
to conveyor_service;

-- Why a workflow's events started nothing, by workflow (conveyor.workflow_refusals,
-- `conveyor workflows refusals SLUG`): dispatch's refusal lines, which name no execution.
create index execution_logs_workflow_refusals_idx on conveyor.execution_logs (workflow_id, logged_at)
where execution_id is null and workflow_id is not null;

-- A schedule slot the tenant's plan had no executions left for (sql/schedules.sql).
alter table conveyor.schedule_firings drop constraint schedule_firings_outcome_check;
alter table conveyor.schedule_firings add constraint schedule_firings_outcome_check
check (outcome in ('started', 'skipped_overlap', 'skipped_quota'));
