-- The periodic tick: one call does every piece of time-driven work the engine has.

-- The earliest timeout of an unfinished execution (null: none), from executions_timeout_idx.
create or replace function conveyor.next_timeout_at()
returns timestamptz
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  return (
    select min(e.timeout_at)
    from conveyor.executions as e
    where e.status in ('pending', 'running', 'waiting') and e.timeout_at is not null
  );
end;
$$;

revoke all on function conveyor.next_timeout_at() from public;
grant execute on function conveyor.next_timeout_at() to conveyor_service;

-- When the next time-driven work falls due: a delay or wait timeout, an execution's
-- timeout, a schedule slot, a date trigger, or an action message becoming visible (a
-- retry's backoff ending, a lease running out). tick() reports it; a runner that saw work
-- move on elsewhere (a dispatch, a write-back) asks only this, not for a whole tick. The
-- runner reads the queue when it wakes then: a retry starts when its backoff ends, not at
-- the runner's next poll (a message sent with a delay wakes no one).
create or replace function conveyor.next_work_due_at()
returns timestamptz
language plpgsql
stable
set search_path = ''
as $$
declare
  -- bounds as values: against clock_timestamp() itself (volatile) the vt index could not be
  -- ranged, and the scan walked every visible message, the whole backlog of a burst
  v_clock timestamptz := pg_catalog.clock_timestamp();
begin
  return least(
    conveyor.next_due_at(),
    conveyor.next_timeout_at(),
    (select min(sc.next_run_at) from conveyor.schedules as sc where sc.active),
    (select min(df.due_at) from conveyor.date_trigger_firings as df where df.fired_at is null),
    -- held notification deliveries and digests (sql/notification_delivery.sql)
    conveyor.next_notification_due_at(),
    -- the vt index: the first message not visible yet (a retry's backoff ending), looked
    -- for in the next 30 s only. Messages in flight and those archived meanwhile (dead
    -- index entries, thousands during a burst) sit at their read time plus the action's
    -- timeout and the runner's margin, mostly further out: a scan over all of them cost
    -- more than the rest of this function. A later due time is found by a later call
    -- (the runner asks at least every poll interval).
    (
      select min(q.vt) from pgmq.q_conveyor_actions as q
      where q.vt > v_clock and q.vt <= v_clock + interval '30 seconds'
    )
  );
end;
$$;

-- The periodic work: dispatch pending events, fire due schedules, expire timeouts, resume
-- due executions, release held notification deliveries and due digests. The runner calls it whenever it is woken (and on a short poll); pg_cron
-- calls it every minute as a safety net. Time is a parameter so tests can move it.
--
-- The result counts what was done and says when time-driven work is next due:
-- next_due_at (the earliest delay or event-wait timeout, schedule slot, date trigger or
-- execution timeout not done yet; null: none) and next_due_in_s, the same in seconds from
-- the end of this call by p_now's clock (rounded up to the millisecond): 0 when it fell
-- due while this call ran, negative when it was due when the call began and is left for
-- the next call (more than p_batch due, or locked by another caller). The runner sleeps
-- until then rather than until its next poll, so a delay resumes on time.
--
-- p_dispatch false leaves new events to a dispatcher of their own: a runner's listener
-- dispatches as their NOTIFY arrives, and a tick that dispatched too would hold the
-- runner's loop for up to ten batches, reading no actions meanwhile.
drop function if exists conveyor.tick(timestamptz, integer);
create or replace function conveyor.tick(
  p_now timestamptz default now(),
  p_batch integer default 1000,
  p_dispatch boolean default true
) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_dispatched integer := 0;
  v_resumed integer;
  v_fired integer;
  v_expired integer := 0;
  v_delivered integer := 0;
  v_batch integer;
  v_next timestamptz;
  v_in numeric;
begin
  -- Bounded: at most 10 batches per call, so one call never holds locks for long.
  for i in 1..10 loop
    exit when not p_dispatch;
    v_batch := conveyor.dispatch(p_batch);
    v_dispatched := v_dispatched + v_batch;
    -- (a batch of a quarter: conveyor.claim_events' share when several tenants wait)
    exit when v_batch < greatest(p_batch / 4, 1);
  end loop;
  v_fired := conveyor.fire_schedules(p_now) + conveyor.fire_date_triggers(p_now, p_batch);
  -- Timeouts and due executions are only scanned for when an index probe finds one due
  -- (resume_due probes for itself): the runner ticks often, and a tick with nothing due
  -- must cost the same with 10 or with 100,000 executions waiting.
  if conveyor.next_timeout_at() <= p_now then
    v_expired := conveyor.expire_timeouts(p_now, p_batch);
  end if;
  v_resumed := conveyor.resume_due(p_now, p_batch);
  -- held notification deliveries and digests, likewise only when a probe finds one due
  if conveyor.next_notification_due_at() <= p_now then
    v_delivered := conveyor.release_notifications(p_now, p_batch);
  end if;

  v_next := conveyor.next_work_due_at();
  -- seconds from now (p_now plus the time this call took) until v_next
  v_in := extract(epoch from v_next - p_now) - extract(epoch from pg_catalog.clock_timestamp() - pg_catalog.now());
  return jsonb_build_object(
    'dispatched', v_dispatched, 'fired', v_fired, 'expired', v_expired, 'resumed', v_resumed,
    'delivered', v_delivered,
    'next_due_at', v_next,
    'next_due_in_s', case
      when v_next is null then null
      when v_next > p_now then greatest(pg_catalog.ceil(v_in * 1000) / 1000, 0)
      else least(pg_catalog.floor(v_in * 1000) / 1000, -0.001)
    end
  );
end;
$$;
