-- Runners announce themselves here, so operators (`conveyor status`) can see which
-- runners are alive and which version of the engine each one talks to.
-- This table is cluster-wide bookkeeping, not tenant data: it has no tenant_id.
create table conveyor.runners (
  runner_id uuid primary key,
  hostname text not null,
  pid integer not null check (pid > 0),
  version text not null,
  started_at timestamptz not null default now(),
  last_seen_at timestamptz not null default now(),
  stopped_at timestamptz,
  constraint runners_stopped_after_start check (stopped_at is null or stopped_at >= started_at)
);

create index runners_alive_idx on conveyor.runners (last_seen_at) where stopped_at is null;
