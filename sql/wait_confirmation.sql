-- Waits, confirmed and timed out by the tick (place 3 of the argument at the top of
-- sql/waits.sql, and the last look-back before a timeout).

-- Whether no transaction is turning p_table's captured rows into events right now: takes
-- and at once releases, in shared mode, the lock conveyor.ingest_table holds for that until
-- its transaction ends (the same key). Holds nothing afterwards, so it cannot deadlock.
create or replace function conveyor.ingest_idle(p_table regclass)
returns boolean
language plpgsql
set search_path = ''
as $$
declare
  v_lock bigint := (1132::bigint << 32) | p_table::oid::bigint;
begin
  if pg_catalog.pg_try_advisory_lock_shared(v_lock) then
    perform pg_catalog.pg_advisory_unlock_shared(v_lock);
    return true;
  end if;
  return false;
end;
$$;

-- Confirms waits registered by transactions that have committed since (case 3 above):
-- each looks back once more and is resumed if something answers it, else marked
-- confirmed. Up to p_limit waits, oldest first; a wait whose execution is locked is left
-- for the next call, and so is every wait while a captured table is being ingested, the registrations of finished executions are removed. Returns how
-- many executions were resumed.
create or replace function conveyor.confirm_waits(p_limit integer default 1000)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_waits conveyor.waits[];
  v_wait conveyor.waits;
  v_hit jsonb;
  v_ids bigint[] := '{}';
  v_hits jsonb[] := '{}';
  v_quiet bigint[] := '{}';
begin
  -- the runner ticks often and usually nothing is unconfirmed: one probe of the partial index
  if not exists (select from conveyor.waits as w where not w.confirmed) then
    return 0;
  end if;
  -- a dispatcher ingesting captured rows may be matching events no one else sees yet
  if exists (select from conveyor.watched_tables as t where not conveyor.ingest_idle(t.table_name)) then
    return 0;
  end if;
  delete from conveyor.waits as w
  using conveyor.executions as x
  where not w.confirmed and x.execution_id = w.execution_id
    and x.status in ('completed', 'failed', 'cancelled', 'timed_out');

  select array_agg(w order by w.registered_at, w.execution_id) into v_waits
  from conveyor.waits as w
  where w.execution_id in (
    select x.execution_id
    from conveyor.executions as x
    where x.execution_id in (
      select p.execution_id from conveyor.waits as p where not p.confirmed order by p.registered_at limit p_limit
    )
      and x.status = 'waiting' and x.wait_kind = 'event'
    for update skip locked
  ) and not w.confirmed
    -- not a wait this transaction registered (a tick's dispatch, say): its confirmation
    -- must see it committed
    and w.registered_by operator(pg_catalog.<>) coalesce(pg_catalog.pg_current_xact_id_if_assigned(), '0'::xid8);

  foreach v_wait in array coalesce(v_waits, '{}') loop
    v_hit := conveyor.wait_hit(v_wait, null, false);
    if v_hit is null then
      v_quiet := v_quiet || v_wait.execution_id;
    else
      v_ids := v_ids || v_wait.execution_id;
      v_hits := v_hits || v_hit;
    end if;
  end loop;
  update conveyor.waits as w set confirmed = true where w.execution_id = any(v_quiet);
  return conveyor.wait_take(v_ids, v_hits, now());
end;
$$;

revoke all on function conveyor.confirm_waits(integer) from public;
grant execute on function conveyor.confirm_waits(integer) to conveyor_service;

-- Waits whose timeout is due (resume_at <= p_now, not paused), up to p_limit, oldest first:
-- each looks back once more (an event that occurred before the timeout and is not
-- dispatched yet still answers it), then takes its event or its timeout branch.
-- Returns how many executions were resumed.
create or replace function conveyor.resume_due_waits(p_now timestamptz, p_limit integer)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_ids bigint[] := '{}';
  v_hits jsonb[] := '{}';
  v_due record;
begin
  for v_due in
    select x.execution_id, x.resume_at, w as wait
    from conveyor.executions as x
    left join conveyor.waits as w on w.execution_id = x.execution_id
    where x.status = 'waiting' and x.wait_kind = 'event' and x.resume_at <= p_now and x.paused_at is null
    order by x.resume_at, x.execution_id
    limit p_limit
    for update of x skip locked
  loop
    v_ids := v_ids || v_due.execution_id;
    v_hits := v_hits || case
      when (v_due.wait).execution_id is not null then conveyor.wait_hit(v_due.wait, v_due.resume_at, false)
    end;
  end loop;
  return conveyor.wait_take(v_ids, v_hits, p_now);
end;
$$;

revoke all on function conveyor.resume_due_waits(timestamptz, integer) from public;
grant execute on function conveyor.resume_due_waits(timestamptz, integer) to conveyor_service;
