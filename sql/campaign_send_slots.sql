-- Send slots (docs/campaigns.md#send-window-and-send-rate): the campaign step's reservation
-- of a send time inside the window and the tenant's send rate (conveyor.campaign_send_slots:
-- a count per tenant, key and calendar minute), the cursors that make a reservation O(1)
-- amortised (conveyor.campaign_send_cursors, migration 0036), and the return of a slot that
-- will not be used: its enrollment paused, cancelled or stopped while it waits, or its
-- recipient suppressed.

-- The send time reserved for one execution: the first minute, from the window's next
-- opening on, whose count still has room (minutes outside the window are skipped), spread
-- within the minute by the count. The cursor of (tenant, key, rate, window) says which
-- minutes from its from_minute on are known full, so the walk starts after them; it is per
-- window (the window's JSON carries the contact's zone), since a minute full for one window
-- says nothing about the minutes another window skipped. Bounded: at most 1,440 minutes tried.
create or replace function conveyor.campaign_send_slot(
  p_tenant_id text,
  p_key text,
  p_per_minute integer,
  p_window jsonb,
  p_now timestamptz
) returns timestamptz
language plpgsql
set search_path = ''
as $$
declare
  v_scope text := coalesce(p_window::text, '');
  v_at timestamptz := p_now;
  v_start timestamptz;
  v_from timestamptz;
  v_cursor timestamptz;
  v_known boolean;
  v_walk timestamptz;
  v_minute timestamptz;
  v_next timestamptz;
  v_open timestamptz;
  v_check boolean := false;
  v_used integer;
begin
  -- One transaction at a time takes a tenant's slots of a key, until it commits: two ticks'
  -- batches that each hold some minutes' rows and wait for the other's deadlocked (two
  -- runners, contacts in two zones), and the loser's step failed its execution.
  perform pg_catalog.pg_advisory_xact_lock(1134, pg_catalog.hashtext(p_tenant_id || '/' || p_key));
  if p_window is not null then
    v_at := conveyor.next_window_start(p_now, p_window);
  end if;
  v_start := date_trunc('minute', v_at);
  select c.from_minute, c.next_minute into v_from, v_cursor
  from conveyor.campaign_send_cursors as c
  where c.tenant_id = p_tenant_id and c.key = p_key and c.per_minute = p_per_minute and c.scope = v_scope;
  -- the cursor's range holds the start: its minutes before next_minute are full
  v_known := v_from <= v_start and v_start <= v_cursor;
  v_minute := case when v_known then v_cursor else v_start end;
  v_walk := v_minute;
  if v_minute > v_start then
    v_at := v_minute;
    v_check := true;
  end if;
  for i in 1..1440 loop
    if v_check and p_window is not null then
      v_open := conveyor.next_window_start(v_minute, p_window);
      if v_open > v_minute then
        v_minute := date_trunc('minute', v_open);
        v_at := v_open;
      end if;
    end if;
    insert into conveyor.campaign_send_slots as s (tenant_id, key, minute, used)
    values (p_tenant_id, p_key, v_minute, 1)
    on conflict (tenant_id, key, minute) do update set used = s.used + 1 where s.used < p_per_minute
    returning s.used into v_used;
    exit when v_used is not null;
    v_minute := v_minute + interval '1 minute';
    v_at := v_minute;
    v_check := true;
  end loop;
  if v_used is null then
    raise exception using errcode = '54000',
      message = format('no send slot free in the next 1440 minutes of the window (key "%s", %s a minute)', p_key,
        p_per_minute);
  end if;
  -- the first minute that may still have room; written only when it moves (once a minute
  -- fills)
  v_next := case when v_used >= p_per_minute then v_minute + interval '1 minute' else v_minute end;
  if v_cursor is null then
    insert into conveyor.campaign_send_cursors as c (tenant_id, key, per_minute, scope, from_minute, next_minute)
    values (p_tenant_id, p_key, p_per_minute, v_scope, v_start, v_next);
  elsif v_known and v_next > v_cursor then
    update conveyor.campaign_send_cursors as c set next_minute = v_next
    where c.tenant_id = p_tenant_id and c.key = p_key and c.per_minute = p_per_minute and c.scope = v_scope;
  elsif not v_known then
    -- a range that does not hold this start says nothing about it: start one here
    update conveyor.campaign_send_cursors as c set from_minute = v_start, next_minute = v_next
    where c.tenant_id = p_tenant_id and c.key = p_key and c.per_minute = p_per_minute and c.scope = v_scope;
  end if;
  return greatest(v_at, v_minute + (v_used - 1) * interval '60 seconds' / p_per_minute);
end;
$$;

-- The slot step an execution waits in (its open or cancelled run with a send time it has
-- not used or returned), for returning or renewing its slot.
create or replace function conveyor.campaign_slot_run(p_execution_id bigint)
returns table (step_run_id bigint, tenant_id text, input jsonb, send_at timestamptz, returned boolean, waiting boolean)
language sql
stable
set search_path = ''
as $$
  select r.step_run_id, r.tenant_id, r.input, (r.output ->> 'send_at')::timestamptz, r.output ? 'returned',
    e.status = 'waiting' and e.wait_kind = 'delay' and r.status = 'running'
  from conveyor.executions as e
  join conveyor.workflow_steps as s on s.workflow_id = e.workflow_id and s.version = e.version and s.step_id = e.current_step
  join conveyor.step_runs as r on r.execution_id = e.execution_id and r.step_id = e.current_step
  where e.execution_id = p_execution_id and s.kind = 'campaign' and s.config -> 'campaign' ->> 'op' = 'slot'
    and r.status in ('running', 'skipped') and r.output ? 'send_at' and not r.output ? 'resumed_at'
  order by r.visit desc, r.attempt desc
  limit 1;
$$;

-- Returns the slot an execution reserved and will not use (p_key: only a slot of that key),
-- if its minute is not over: the minute's count goes down and the cursors whose full range
-- held it move back to it, so the next reservation takes it. Once per reservation (the run
-- is marked returned). Returns whether a slot was returned.
create or replace function conveyor.campaign_return_slot(p_execution_id bigint, p_key text default null)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_run record;
  v_key text;
  v_minute timestamptz;
begin
  select * into v_run from conveyor.campaign_slot_run(p_execution_id) as r;
  v_key := v_run.input ->> 'key';
  v_minute := date_trunc('minute', v_run.send_at);
  if v_run.step_run_id is null or v_run.returned or v_key is distinct from coalesce(p_key, v_key)
    or v_minute + interval '1 minute' <= now() then
    return false;
  end if;
  perform pg_catalog.pg_advisory_xact_lock(1134, pg_catalog.hashtext(v_run.tenant_id || '/' || v_key));
  update conveyor.step_runs as r set output = r.output || jsonb_build_object('returned', now())
  where r.step_run_id = v_run.step_run_id;
  update conveyor.campaign_send_cursors as c set next_minute = v_minute
  where c.tenant_id = v_run.tenant_id and c.key = v_key and c.from_minute <= v_minute and v_minute < c.next_minute;
  update conveyor.campaign_send_slots as s set used = s.used - 1
  where s.tenant_id = v_run.tenant_id and s.key = v_key and s.minute = v_minute and s.used > 0;
  return found;
end;
$$;

-- A paused enrollment resumed: the execution whose slot was returned while it was paused
-- must not send at the old time (the slot may be someone else's now). It is made due, so
-- the resume's conveyor.campaign_release_slots (sql/campaign_control.sql) runs its slot
-- step again and it takes a new slot in the rate, as one whose slot passed while paused.
create or replace function conveyor.campaign_renew_slot(p_execution_id bigint) returns timestamptz
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_run record;
begin
  select * into v_run from conveyor.campaign_slot_run(p_execution_id) as r;
  if v_run.step_run_id is null or not v_run.returned or not v_run.waiting then
    return null;
  end if;
  update conveyor.executions as e set resume_at = now() - interval '1 millisecond'
  where e.execution_id = p_execution_id;
  return now() - interval '1 millisecond';
end;
$$;

-- An enrollment leaving 'active' (paused, cancelled, stopped, failed) returns its slot;
-- one resumed from 'paused' renews it (conveyor.control_enrollment pauses the execution
-- before it marks the enrollment, and marks it active before it resumes the execution).
create or replace function conveyor.campaign_enrollment_slot() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if new.execution_id is not null then
    if old.status = 'paused' and new.status = 'active' then
      perform conveyor.campaign_renew_slot(new.execution_id);
    elsif old.status = 'active' then
      perform conveyor.campaign_return_slot(new.execution_id);
    end if;
  end if;
  return null;
end;
$$;

-- A suppressed address (an unsubscribe, a complaint, a hard bounce): the enrollment whose
-- message it was will have its next email skipped, so its waiting email slot is returned.
create or replace function conveyor.campaign_suppressed_slot() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform conveyor.campaign_return_slot(e.execution_id, 'email')
  from conveyor.email_messages as m
  join conveyor.campaign_enrollments as e on e.enrollment_id::text = m.tags ->> 'enrollment_id' and e.tenant_id = m.tenant_id
  where m.id = new.email_message_id and m.tags ->> 'enrollment_id' ~ '^[0-9]{1,18}$'
    and e.status in ('active', 'paused') and e.execution_id is not null;
  return null;
end;
$$;

revoke all on function conveyor.campaign_return_slot(bigint, text) from public;
revoke all on function conveyor.campaign_renew_slot(bigint) from public;

-- (not on 'completed': the finish step ran, so the execution waits for no slot; every
-- enrollment's end would pay the look-up)
create or replace trigger campaign_enrollments_send_slot after update of status on conveyor.campaign_enrollments
for each row when (old.status is distinct from new.status and new.status <> 'completed')
execute function conveyor.campaign_enrollment_slot();

-- (email_suppressions exists once delivery tracking does, migration 0034; sql/ is
-- re-applied after every migration)
do $$
begin
  if to_regclass('conveyor.email_suppressions') is not null then
    create or replace trigger email_suppressions_campaign_slot after insert on conveyor.email_suppressions
    for each row execute function conveyor.campaign_suppressed_slot();
  end if;
end;
$$;
