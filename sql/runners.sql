-- Runner heartbeats: a runner calls runner_heartbeat() when it starts and then
-- periodically; runner_stopped() when it shuts down cleanly.

create or replace function conveyor.runner_heartbeat(
  p_runner_id uuid,
  p_hostname text,
  p_pid integer,
  p_version text
) returns timestamptz
language sql
set search_path = ''
as $$
  insert into conveyor.runners as r (runner_id, hostname, pid, version)
  values (p_runner_id, p_hostname, p_pid, p_version)
  on conflict (runner_id) do update
    set last_seen_at = now(), stopped_at = null
  returning r.last_seen_at;
$$;

create or replace function conveyor.runner_stopped(p_runner_id uuid) returns boolean
language sql
set search_path = ''
as $$
  update conveyor.runners
  set stopped_at = greatest(now(), started_at)
  where runner_id = p_runner_id and stopped_at is null
  returning true;
$$;

-- Runners seen within `p_within`, newest first: what `conveyor status` shows.
create or replace function conveyor.live_runners(p_within interval default interval '1 minute')
returns table (runner_id uuid, hostname text, pid integer, version text, started_at timestamptz, last_seen_at timestamptz)
language sql
stable
set search_path = ''
as $$
  select r.runner_id, r.hostname, r.pid, r.version, r.started_at, r.last_seen_at
  from conveyor.runners as r
  where r.stopped_at is null and r.last_seen_at > now() - p_within
  order by r.last_seen_at desc;
$$;
