-- Later: 0012_hot_path_foreign_keys.sql drops four foreign keys declared below:
-- step_runs' execution_id and tenant_id, executions' event_id and tenant_id.
-- 0015_due_scan_index.sql replaces executions_due_idx with executions_due_scan_idx;
-- 0017_step_run_hot_updates.sql drops step_runs_msg_idx and sets step_runs' fill factor
-- to 60; 0022_wait_registrations.sql drops executions_waiting_event_idx (waits are found
-- through conveyor.waits). 0011_execution_control.sql adds executions.retry_of and
-- paused_at. workflow_stats' shard is the writing backend's (conveyor.stats_shard in
-- sql/interpreter.sql), not execution_id % 16. 0021_verified_tenant.sql rewrites the
-- policies below to compare tenant_id with (select conveyor.current_tenant()), the tenant
-- conveyor.set_tenant verified, not the setting conveyor.tenant_id.
-- 0027_fanouts.sql adds executions.parent_execution_id, fanout_id, child_index and item,
-- and the wait kinds 'children' and 'turn' to executions_wait_kind_check.

-- Executions, their step runs, operator log lines and per-workflow statistics.
create table conveyor.executions (
  execution_id bigint generated always as identity primary key,
  tenant_id text not null references conveyor.tenants (tenant_id),
  workflow_id bigint not null,
  -- The version the execution started with; it keeps running it whatever is published later.
  version integer not null,
  event_id bigint references conveyor.events (event_id) on delete set null,
  entity_type text,
  entity_id text,
  -- Set only for run-once-per-entity workflows: a second execution for the entity is refused.
  once_key text,
  status text not null default 'pending' check (status in (
    'pending', 'running', 'waiting', 'completed', 'failed', 'cancelled', 'timed_out'
  )),
  -- The step to run next (pending/running) or being waited on (waiting).
  current_step text,
  -- What the execution is waiting for: 'action' (a queued external action),
  -- 'delay' (until resume_at) or 'event' (a correlated event, or resume_at as timeout).
  wait_kind text check (wait_kind in ('action', 'delay', 'event')),
  resume_at timestamptz,
  -- The trigger data templates see as {{trigger...}} (event snapshot or manual input).
  trigger jsonb not null default '{}',
  vars jsonb not null default '{}',
  -- Step outputs by step id, as templates see them ({{steps.<id>.output...}}).
  step_outputs jsonb not null default '{}',
  depth integer not null default 0 check (depth >= 0),
  steps_run integer not null default 0 check (steps_run >= 0),
  error jsonb,
  created_at timestamptz not null default now(),
  started_at timestamptz,
  finished_at timestamptz,
  timeout_at timestamptz,
  foreign key (workflow_id, version) references conveyor.workflow_versions (workflow_id, version),
  constraint executions_finished_iff_final check (
    (status in ('completed', 'failed', 'cancelled', 'timed_out')) = (finished_at is not null)
  ),
  constraint executions_waiting_has_reason check ((status = 'waiting') = (wait_kind is not null)),
  constraint executions_failed_has_error check (status <> 'failed' or error is not null)
);

create index executions_due_idx on conveyor.executions (resume_at)
where status = 'waiting' and resume_at is not null;
-- Executions waiting for a correlated event, found by tenant when events arrive.
create index executions_waiting_event_idx on conveyor.executions (tenant_id)
where status = 'waiting' and wait_kind = 'event';
create index executions_workflow_time_idx on conveyor.executions (workflow_id, created_at);
create index executions_workflow_active_idx on conveyor.executions (workflow_id)
where status in ('pending', 'running', 'waiting');
create index executions_tenant_time_idx on conveyor.executions (tenant_id, created_at);
create unique index executions_once_per_entity on conveyor.executions (workflow_id, once_key)
where once_key is not null;

-- One row per run of a step (a step inside a loop runs several times: visit 1, 2, ...),
-- and per attempt of that run.
create table conveyor.step_runs (
  step_run_id bigint generated always as identity primary key,
  execution_id bigint not null references conveyor.executions (execution_id) on delete cascade,
  tenant_id text not null references conveyor.tenants (tenant_id),
  step_id text not null,
  visit integer not null default 1 check (visit > 0),
  attempt integer not null default 1 check (attempt > 0),
  status text not null check (status in ('running', 'queued', 'completed', 'failed', 'skipped')),
  input jsonb,
  output jsonb,
  error jsonb,
  -- Stable across attempts: execution, step and visit. Sent to receivers for deduplication.
  idempotency_key text,
  -- The pgmq message carrying the action while status = 'queued'.
  msg_id bigint,
  -- Where the interpreter went after this run (the branch taken, the error target, ...);
  -- null when the execution ended here or the run is still open.
  next_step text,
  started_at timestamptz not null default now(),
  finished_at timestamptz,
  constraint step_runs_unique_attempt unique (execution_id, step_id, visit, attempt),
  constraint step_runs_finished_iff_final check (
    (status in ('completed', 'failed', 'skipped')) = (finished_at is not null)
  )
);

create index step_runs_msg_idx on conveyor.step_runs (msg_id) where status = 'queued';
create index step_runs_tenant_time_idx on conveyor.step_runs (tenant_id, started_at);

-- Operator-facing log lines: why an event started nothing (rate limit, run-once, depth),
-- why a step failed, what a retry decided.
create table conveyor.execution_logs (
  log_id bigint generated always as identity primary key,
  tenant_id text not null references conveyor.tenants (tenant_id),
  execution_id bigint references conveyor.executions (execution_id) on delete cascade,
  workflow_id bigint,
  event_id bigint,
  step_id text,
  level text not null check (level in ('info', 'warning', 'error')),
  message text not null,
  details jsonb,
  logged_at timestamptz not null default now()
);

create index execution_logs_execution_idx on conveyor.execution_logs (execution_id);
create index execution_logs_tenant_time_idx on conveyor.execution_logs (tenant_id, logged_at);

-- Per-workflow counters, sharded so concurrent executions of one workflow do not queue
-- on a single hot row: a finishing execution updates shard (execution_id % 16).
create table conveyor.workflow_stats (
  workflow_id bigint not null references conveyor.workflows (workflow_id) on delete cascade,
  shard smallint not null check (shard between 0 and 15),
  tenant_id text not null references conveyor.tenants (tenant_id),
  started integer not null default 0,
  completed integer not null default 0,
  failed integer not null default 0,
  cancelled integer not null default 0,
  timed_out integer not null default 0,
  total_duration_ms bigint not null default 0,
  last_run_at timestamptz,
  last_error_at timestamptz,
  primary key (workflow_id, shard)
);

alter table conveyor.executions enable row level security;
alter table conveyor.executions force row level security;
alter table conveyor.step_runs enable row level security;
alter table conveyor.step_runs force row level security;
alter table conveyor.execution_logs enable row level security;
alter table conveyor.execution_logs force row level security;
alter table conveyor.workflow_stats enable row level security;
alter table conveyor.workflow_stats force row level security;

create policy executions_isolation on conveyor.executions
using (tenant_id = pg_catalog.current_setting('conveyor.tenant_id', true));
create policy step_runs_isolation on conveyor.step_runs
using (tenant_id = pg_catalog.current_setting('conveyor.tenant_id', true));
create policy execution_logs_isolation on conveyor.execution_logs
using (tenant_id = pg_catalog.current_setting('conveyor.tenant_id', true));
create policy workflow_stats_isolation on conveyor.workflow_stats
using (tenant_id = pg_catalog.current_setting('conveyor.tenant_id', true));

grant select on conveyor.executions, conveyor.step_runs, conveyor.execution_logs,
conveyor.workflow_stats to conveyor_app;
grant select, insert, update, delete on conveyor.executions, conveyor.step_runs,
conveyor.execution_logs, conveyor.workflow_stats to conveyor_service;

-- The hand-off queue to the runner. Messages carry fully rendered inputs.
select pgmq.create('conveyor_actions');
