-- Indexes for the time-driven maintenance jobs (timeouts and retention scans).
create index executions_timeout_idx on conveyor.executions (timeout_at)
where status in ('pending', 'running', 'waiting') and timeout_at is not null;
create index executions_finished_idx on conveyor.executions (tenant_id, finished_at)
where finished_at is not null;
create index execution_logs_unattached_idx on conveyor.execution_logs (tenant_id, logged_at)
where execution_id is null;
create index events_dispatched_idx on conveyor.events (tenant_id, dispatched_at)
where dispatched_at is not null;
