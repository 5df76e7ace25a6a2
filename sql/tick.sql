-- The periodic tick: one call does every piece of time-driven work the engine has.

-- The periodic work: dispatch pending events, fire due schedules, expire timeouts, resume
-- due executions. The runner calls
-- it whenever it is woken (and on a short poll); pg_cron calls it every minute as a safety
-- net. Time is a parameter so tests can move it.
drop function if exists conveyor.tick(timestamptz, integer);
create or replace function conveyor.tick(
  p_now timestamptz default now(),
  p_batch integer default 1000
) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_dispatched integer := 0;
  v_resumed integer;
  v_fired integer;
  v_expired integer;
  v_batch integer;
begin
  -- Bounded: at most 10 batches per call, so one call never holds locks for long.
  for i in 1..10 loop
    v_batch := conveyor.dispatch(p_batch);
    v_dispatched := v_dispatched + v_batch;
    exit when v_batch < p_batch;
  end loop;
  v_fired := conveyor.fire_schedules(p_now) + conveyor.fire_date_triggers(p_now, p_batch);
  v_expired := conveyor.expire_timeouts(p_now, p_batch);
  v_resumed := conveyor.resume_due(p_now, p_batch);
  return jsonb_build_object(
    'dispatched', v_dispatched, 'fired', v_fired, 'expired', v_expired, 'resumed', v_resumed
  );
end;
$$;
