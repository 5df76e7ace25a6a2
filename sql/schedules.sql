-- Schedules: cron-triggered workflows, fired by conveyor.tick() (runners, and pg_cron
-- every minute).
--
-- * Exactly once per slot: schedule_firings' primary key (schedule_id, slot), plus
--   `for update skip locked` so racing ticks do not even try the same schedule.
-- * Catch-up once: after an outage only the latest missed slot fires, with the number of
--   slots it stands for in missed_slots; never a burst.
-- * Overlap 'skip': a slot whose previous execution still runs is recorded as skipped.
-- * Auto-disable: when the last max_consecutive_failures executions all failed, the
--   schedule is disabled with a reason and a log line instead of firing again.

-- The latest slot at or before p_now (null if none in the last 8 years): a window
-- (p_now - w, p_now] that holds a slot, doubling w, then a bisection down to one minute
-- (slots are whole minutes): about 8 cron_next calls for an hour, 30 for years, where
-- walking the window slot by slot took one call per slot (60 for an every-minute cron).
create or replace function conveyor.cron_latest_slot(p_cron text, p_timezone text, p_now timestamptz)
returns timestamptz
language plpgsql
stable
set search_path = ''
as $$
declare
  v_window interval := interval '1 hour';
  v_lo timestamptz;
  v_hi timestamptz := p_now;
  v_mid timestamptz;
  v_slot timestamptz;
begin
  loop
    v_lo := p_now - v_window;
    v_slot := conveyor.cron_next(p_cron, v_lo, p_timezone);
    exit when v_slot is not null and v_slot <= p_now;
    if v_window > interval '8 years' then
      return null;
    end if;
    v_window := v_window * 2;
  end loop;
  -- Invariants: a slot lies in (v_lo, p_now]; none lies in (v_hi, p_now].
  while v_hi - v_lo > interval '1 minute' loop
    v_mid := v_lo + (v_hi - v_lo) / 2;
    v_slot := conveyor.cron_next(p_cron, v_mid, p_timezone);
    if v_slot is not null and v_slot <= p_now then
      v_lo := v_mid;
    else
      v_hi := v_mid;
    end if;
  end loop;
  return conveyor.cron_next(p_cron, v_lo, p_timezone);
end;
$$;

-- Slots in (p_from, p_to], counted up to p_cap (for the missed_slots figure).
create or replace function conveyor.cron_count_slots(
  p_cron text, p_timezone text, p_from timestamptz, p_to timestamptz, p_cap integer default 1000
) returns integer
language plpgsql
stable
set search_path = ''
as $$
declare
  v_count integer := 0;
  v_at timestamptz := p_from;
begin
  loop
    v_at := conveyor.cron_next(p_cron, v_at, p_timezone);
    exit when v_at is null or v_at > p_to or v_count >= p_cap;
    v_count := v_count + 1;
  end loop;
  return v_count;
end;
$$;

-- Create, change or remove a workflow's schedule from its trigger document
-- ({"schedule": {"cron": "0 9 * * MON", "timezone": "Europe/Berlin", "overlap": "skip",
-- "max_consecutive_failures": 5}}, or null to remove). Called by publish.
create or replace function conveyor.sync_schedule(p_workflow_id bigint, p_schedule jsonb)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_cron text := p_schedule ->> 'cron';
  v_timezone text := coalesce(p_schedule ->> 'timezone', 'UTC');
begin
  if p_schedule is null then
    delete from conveyor.schedules where workflow_id = p_workflow_id;
    return;
  end if;
  insert into conveyor.schedules as s (
    tenant_id, workflow_id, cron, timezone, overlap, max_consecutive_failures, next_run_at
  )
  select w.tenant_id, w.workflow_id, v_cron, v_timezone, coalesce(p_schedule ->> 'overlap', 'skip'),
    case when p_schedule ? 'max_consecutive_failures'
      then (p_schedule ->> 'max_consecutive_failures')::integer else 5 end,
    conveyor.cron_next(v_cron, now(), v_timezone)
  from conveyor.workflows as w
  where w.workflow_id = p_workflow_id
  on conflict (workflow_id) do update
    set cron = excluded.cron, timezone = excluded.timezone, overlap = excluded.overlap,
      max_consecutive_failures = excluded.max_consecutive_failures,
      -- A changed expression or zone restarts from now; an unchanged one keeps its place.
      next_run_at = case when (s.cron, s.timezone) = (excluded.cron, excluded.timezone)
        then s.next_run_at else excluded.next_run_at end,
      updated_at = now();
end;
$$;

-- Fire every due schedule once. Returns the number of firings (started or skipped).
create or replace function conveyor.fire_schedules(
  p_now timestamptz default now(),
  p_limit integer default 100
) returns integer
language plpgsql
set search_path = ''
as $$
declare
  s record;
  v_slot timestamptz;
  v_next timestamptz;
  v_missed integer;
  v_execution_id bigint;
  v_recent_failures integer;
  v_fired integer := 0;
  v_constraint text;
begin
  -- One schedule at a time: each firing starts an execution, which is per-row work anyway.
  for s in
    select sc.*, w.active as workflow_active
    from conveyor.schedules as sc
    join conveyor.workflows as w on w.workflow_id = sc.workflow_id
    where sc.active and sc.next_run_at <= p_now
    order by sc.next_run_at
    limit p_limit
    for update of sc skip locked
  loop
    if not s.workflow_active then
      update conveyor.schedules
      set next_run_at = conveyor.cron_next(s.cron, p_now, s.timezone), updated_at = now()
      where schedule_id = s.schedule_id;
      continue;
    end if;

    -- The slot to fire is the latest at or before p_now. next_run_at is the first slot
    -- not yet fired, so on a tick in time that is it, and the slot after it (the next
    -- next_run_at) lies past p_now: two cron_next calls. After a short outage walk the
    -- slots passed over (each is one missed slot); after a long one, jump.
    v_slot := conveyor.cron_next(s.cron, s.next_run_at - interval '1 microsecond', s.timezone);
    if v_slot is null or v_slot > p_now then
      -- next_run_at was not a slot (set by hand): the first slot after it is not due yet.
      update conveyor.schedules set next_run_at = v_slot, updated_at = now()
      where schedule_id = s.schedule_id;
      continue;
    end if;
    v_missed := 0;
    v_next := conveyor.cron_next(s.cron, v_slot, s.timezone);
    while v_next <= p_now and v_missed < 60 loop
      v_slot := v_next;
      v_missed := v_missed + 1;
      v_next := conveyor.cron_next(s.cron, v_slot, s.timezone);
    end loop;
    if v_next <= p_now then
      v_next := conveyor.cron_latest_slot(s.cron, s.timezone, p_now);
      v_missed := v_missed + conveyor.cron_count_slots(s.cron, s.timezone, v_slot, v_next);
      v_slot := v_next;
      v_next := conveyor.cron_next(s.cron, p_now, s.timezone);
    end if;

    -- Auto-disable: the last N executions of this schedule all failed.
    if s.max_consecutive_failures is not null then
      select count(*) filter (where x.status in ('failed', 'timed_out')) into v_recent_failures
      from (
        select f.execution_id from conveyor.schedule_firings as f
        where f.schedule_id = s.schedule_id and f.outcome = 'started'
        order by f.slot desc
        limit s.max_consecutive_failures
      ) as recent
      join conveyor.executions as x on x.execution_id = recent.execution_id;
      if v_recent_failures >= s.max_consecutive_failures then
        update conveyor.schedules
        set active = false, updated_at = now(),
          disabled_reason = format('disabled after %s consecutive failed executions', v_recent_failures)
        where schedule_id = s.schedule_id;
        insert into conveyor.execution_logs (tenant_id, workflow_id, level, message, details)
        values (s.tenant_id, s.workflow_id, 'error',
          format('schedule %s ("%s" %s) disabled after %s consecutive failed executions',
            s.schedule_id, s.cron, s.timezone, v_recent_failures),
          jsonb_build_object('reason', 'schedule_disabled', 'schedule_id', s.schedule_id));
        continue;
      end if;
    end if;

    if s.overlap = 'skip' and exists (
      select from conveyor.executions as x
      where x.execution_id = s.last_execution_id and x.status in ('pending', 'running', 'waiting')
    ) then
      insert into conveyor.schedule_firings (schedule_id, slot, tenant_id, outcome, missed_slots)
      values (s.schedule_id, v_slot, s.tenant_id, 'skipped_overlap', v_missed)
      on conflict do nothing;
      if found then
        v_fired := v_fired + 1;
        insert into conveyor.execution_logs (tenant_id, workflow_id, execution_id, level, message, details)
        values (s.tenant_id, s.workflow_id, s.last_execution_id, 'info',
          format('schedule slot %s skipped: the previous execution %s is still running', v_slot,
            s.last_execution_id),
          jsonb_build_object('reason', 'overlap', 'slot', v_slot));
      end if;
    elsif conveyor.execution_quota_refusal(s.tenant_id) is not null then
      -- the plan's executions per month are spent: the slot is recorded, and why
      insert into conveyor.schedule_firings (schedule_id, slot, tenant_id, outcome, missed_slots)
      values (s.schedule_id, v_slot, s.tenant_id, 'skipped_quota', v_missed)
      on conflict do nothing;
      if found then
        v_fired := v_fired + 1;
        insert into conveyor.execution_logs (tenant_id, workflow_id, level, message, details)
        values (s.tenant_id, s.workflow_id, 'warning',
          format('schedule slot %s started no execution: %s', v_slot, conveyor.execution_quota_refusal(s.tenant_id)),
          jsonb_build_object('reason', 'executions_per_month', 'slot', v_slot));
      end if;
    else
      -- The primary key is what makes a slot fire once: if another tick recorded this
      -- slot, the unique violation rolls back this block, execution included.
      begin
        v_execution_id := conveyor.start_workflow(s.workflow_id, jsonb_build_object(
          'kind', 'schedule', 'occurred_at', v_slot, 'depth', 0,
          'payload', jsonb_build_object('slot', v_slot, 'cron', s.cron, 'timezone', s.timezone,
            'missed_slots', v_missed, 'schedule_id', s.schedule_id)));
        insert into conveyor.schedule_firings (schedule_id, slot, tenant_id, outcome, missed_slots, execution_id)
        values (s.schedule_id, v_slot, s.tenant_id, 'started', v_missed, v_execution_id);
        update conveyor.schedules set last_execution_id = v_execution_id
        where schedule_id = s.schedule_id;
        v_fired := v_fired + 1;
      exception when unique_violation then
        get stacked diagnostics v_constraint = constraint_name;
        if v_constraint is distinct from 'schedule_firings_pkey' then
          raise;
        end if;
      end;
    end if;

    update conveyor.schedules
    set last_slot = greatest(last_slot, v_slot), next_run_at = v_next, updated_at = now()
    where schedule_id = s.schedule_id;
  end loop;
  return v_fired;
end;
$$;
