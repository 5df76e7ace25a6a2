-- Waits: executions waiting for a correlated event (wait_for_event) or for a platform row's
-- state (wait_until), and the matching that resumes them. A wait is a row of conveyor.waits
-- (migration 0022) beside its waiting execution.
--
-- The guarantee: an event correlated with a wait resumes it whenever the event occurred at
-- or after the wait's look-back point ("since") and committed before its timeout, whatever
-- the interleaving of runners, dispatchers, batches and ticks; and an execution is resumed
-- once. A wait_until resumes when its row satisfies the condition at the wait's start, or
-- after a captured change of the row that makes it true.
--
-- Why nothing is missed (READ COMMITTED, any number of dispatchers). Matching is
-- not done by one side hoping to see the other: a wait and an event meet in one of three
-- places, and every pair (wait W written by transaction Tw, event E committed by Te) meets
-- in at least one of them.
--   1. The wait's start (conveyor.wait_begin, in Tw): a statement that looks back over
--      every committed event since W's look-back point. If Te committed before that
--      statement's snapshot, W sees E and takes it at once.
--   2. The event's dispatch (conveyor.resume_waiting_for_events): the dispatcher D claimed
--      E, so Te committed before D's matching statement. If Tw also committed before it, D
--      sees W's row and takes W.
--   3. The confirmation (conveyor.confirm_waits, run by every tick): W stays unconfirmed
--      until another transaction, in statements after Tw committed (it sees W), has looked
--      back once more and found nothing (Tw itself, a tick that dispatched, leaves it). If neither 1 nor 2 saw the pair, Te
--      committed after Tw's look-back and D's statement ran before Tw committed; Te
--      committed before D's statement, so before Tw's commit, so before the confirmation's
--      statement: the confirmation sees E. Events committed after the confirmation are
--      matched by their dispatcher, which then sees W (case 2). A confirmation that rolls
--      back leaves W unconfirmed, and a wait the confirmation finds locked is left for the
--      next tick.
--      One kind of event is not committed before its dispatcher's statement: a captured
--      change, which the dispatcher itself turns into an event (sql/ingest.sql) and commits
--      with its dispatch. So a confirmation first waits for no ingest to be in progress
--      (conveyor.ingest_idle; when one is, it confirms nothing this time): a dispatcher that
--      ingested before it has committed, and one that ingests after it sees W.
--   And before a wait times out (conveyor.resume_due_waits) it looks back once more: an
--   event committed before the timeout but not dispatched yet (a backlog) still wins.
-- A wait_until's truth is its row, which the platform committed before its change was
-- captured: the three places read the row itself, so the same argument holds with "E" the
-- change (a change reverted before any place reads the row is not seen).
-- Event ids are not commit-ordered (concurrent transactions, captured tables ingested table
-- by table), so no side ever reasons "events after id N": the look-back is by time
-- (occurred_at, the time the event's transaction began) and by visibility, and each place
-- reads all committed events of its window.
--
-- Once: every place that resumes a wait locks its execution first and re-checks that it
-- still waits (under READ COMMITTED a `for update` that waited re-reads the row), and the
-- dispatcher locks only the executions whose waits match its events, in id order.
--
-- Locks: a dispatcher locks only the executions its events answer, found through
-- waits_key_idx by tenant, type or pattern, and match values (the correlations a tenant's
-- waits can have come from its wait steps), never a tenant's whole set of waits.
--
-- The files: this one holds what the three places share (what answers a wait, taking an
-- answer) and place 1, the wait's start; wait_matching.sql is place 2, an event's
-- dispatch; wait_confirmation.sql is place 3, the confirmation, and the timeouts.

-- Whether an event's trigger object has the values a wait correlates on.
create or replace function conveyor.wait_matches(p_paths text[], p_values text[], p_event jsonb)
returns boolean
language sql
immutable
parallel safe
set search_path = ''
as $$
  select p_values = array(
    select p_event #>> pg_catalog.string_to_array(u.path, '.')
    from unnest(p_paths) with ordinality as u (path, n)
    order by u.n
  );
$$;

-- The row p_id of a registered entity of p_tenant_id as JSON (null when there is none),
-- read through its registration in conveyor.entities, tenant-scoped.
create or replace function conveyor.wait_row(p_tenant_id text, p_entity text, p_id text)
returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_entity conveyor.entities;
  v_tenant_type text;
  v_id_type text;
  v_row jsonb;
begin
  select e.* into v_entity from conveyor.entities as e where e.entity = p_entity;
  if not found then
    raise exception using
      errcode = '22023',
      message = format('wait_until.entity: unknown entity "%s"', p_entity),
      hint = 'register the platform''s table first: `conveyor entities add ENTITY TABLE`';
  end if;
  -- compared in the columns' own types, so the platform's indexes serve the lookup
  select pg_catalog.format_type(a.atttypid, a.atttypmod) into v_tenant_type
  from pg_catalog.pg_attribute as a
  where a.attrelid = v_entity.table_name and a.attname = v_entity.tenant_column;
  select pg_catalog.format_type(a.atttypid, a.atttypmod) into v_id_type
  from pg_catalog.pg_attribute as a
  where a.attrelid = v_entity.table_name and a.attname = v_entity.id_column;
  begin
    execute format(
      'select pg_catalog.to_jsonb(t) from %s as t where t.%I = $1::%s and t.%I = $2::%s',
      v_entity.table_name, v_entity.tenant_column, v_tenant_type, v_entity.id_column, v_id_type
    ) into v_row using p_tenant_id, p_id;
  exception when invalid_text_representation then
    -- an id that is no value of the id column's type names no row
    return null;
  end;
  return v_row;
end;
$$;

revoke all on function conveyor.wait_row(text, text, text) from public;

-- What answers a wait now, looking back: {"event": <trigger object>} for the first event
-- (by occurred_at, then id) correlated with it that occurred at or after its look-back
-- point (and, given p_upto, not after p_upto), or for a wait_until {"row": ..., "event":
-- null} when its row satisfies the condition; null when nothing does. p_strict: a
-- condition that fails raises (the wait's start: the step fails); otherwise it counts as
-- not satisfied (matching must not stop dispatch).
create or replace function conveyor.wait_hit(p_wait conveyor.waits, p_upto timestamptz, p_strict boolean)
returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_event jsonb;
  v_row jsonb;
  v_holds boolean;
  v_prefix text;
begin
  if p_wait.entity is not null then
    v_row := conveyor.wait_row(p_wait.tenant_id, p_wait.entity, p_wait.entity_id);
    if v_row is null then
      return null;
    end if;
    if p_strict then
      v_holds := conveyor.eval_condition(p_wait.condition, jsonb_build_object('row', v_row));
    else
      select c.holds into v_holds
      from conveyor.try_eval_condition(p_wait.condition, jsonb_build_object('row', v_row)) as c;
    end if;
    return case when v_holds then jsonb_build_object('row', v_row, 'event', null) end;
  end if;

  if p_wait.event_key !~ '\*' then
    -- one type: index events_tenant_type_time_idx
    select conveyor.event_trigger_object(e) into v_event
    from conveyor.events as e
    where e.tenant_id = p_wait.tenant_id and e.event_type = p_wait.event_key
      and e.occurred_at >= p_wait.since and (p_upto is null or e.occurred_at <= p_upto)
      and conveyor.wait_matches(p_wait.match_paths, p_wait.match_values, conveyor.event_trigger_object(e))
    order by e.occurred_at, e.event_id
    limit 1;
  else
    -- a pattern ('crm.*', 'crm.contact.*', '*'): the tenant's events of the window
    v_prefix := pg_catalog.rtrim(p_wait.event_key, '*');
    select conveyor.event_trigger_object(e) into v_event
    from conveyor.events as e
    where e.tenant_id = p_wait.tenant_id and pg_catalog.starts_with(e.event_type, v_prefix)
      and e.occurred_at >= p_wait.since and (p_upto is null or e.occurred_at <= p_upto)
      and conveyor.wait_matches(p_wait.match_paths, p_wait.match_values, conveyor.event_trigger_object(e))
    order by e.occurred_at, e.event_id
    limit 1;
  end if;
  return case when v_event is not null then jsonb_build_object('event', v_event) end;
end;
$$;

revoke all on function conveyor.wait_hit(conveyor.waits, timestamptz, boolean) from public;

-- The look-back point of a wait_for_event, from its rendered "since": "execution" (the
-- default: the time the trigger occurred, or the execution's start for a run without an
-- event), "wait" (the start of the transaction that began the wait) or a timestamp.
create or replace function conveyor.wait_since(p_exec conveyor.executions, p_since jsonb, p_now timestamptz, p_where text)
returns timestamptz
language plpgsql
stable
set search_path = ''
as $$
begin
  if p_since is null or p_since = '"execution"' then
    return coalesce((p_exec.trigger ->> 'occurred_at')::timestamptz, p_exec.started_at, p_exec.created_at, p_now);
  elsif p_since = '"wait"' then
    -- the wait's transaction's start, on the clock events' occurred_at are read from (p_now
    -- may be a test's clock or a late due-scan's)
    return now();
  end if;
  begin
    return (p_since #>> '{}')::timestamptz;
  exception when others then
    raise exception using
      errcode = '22023',
      message = format('%s.since: %s is not "execution", "wait" or a timestamp', p_where, p_since::text);
  end;
end;
$$;

-- A wait step begins (called by the interpreter, in the transaction that reached it): the
-- step's output as it starts waiting ({"timeout_at", "since"}), or, when something already
-- answers it (an event since its look-back point, a row already satisfying the condition),
-- the output of the answered wait ({"timeout_at", "timed_out": false, "event", "row"?}):
-- the interpreter then takes the event branch at once. p_register false (dry run): no
-- look-back, nothing registered.
create or replace function conveyor.wait_begin(
  p_exec conveyor.executions,
  p_kind text,
  p_step_id text,
  p_input jsonb,
  p_timeout_at timestamptz,
  p_now timestamptz,
  p_register boolean,
  p_where text
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_wait conveyor.waits;
  v_hit jsonb;
  v_output jsonb := jsonb_build_object('timeout_at', p_timeout_at);
begin
  if not p_register then
    return v_output;
  end if;
  v_wait.execution_id := p_exec.execution_id;
  v_wait.tenant_id := p_exec.tenant_id;
  v_wait.step_id := p_step_id;
  v_wait.registered_at := now();
  -- the top-level transaction (the row's xmin may be a step's subtransaction)
  v_wait.registered_by := pg_catalog.pg_current_xact_id();
  v_wait.confirmed := false;
  if p_kind = 'wait_until' then
    if jsonb_typeof(p_input -> 'id') not in ('string', 'number') then
      raise exception using
        errcode = '22023',
        message = format('%s.wait_until.id: expected the row id, got %s', p_where, coalesce(p_input -> 'id', 'null')::text);
    end if;
    v_wait.event_key := 'entity:' || (p_input ->> 'entity');
    v_wait.match_paths := array['entity_id'];
    v_wait.match_values := array[p_input ->> 'id'];
    -- the state is what counts: any captured change of the row has it checked again
    v_wait.since := '-infinity';
    v_wait.entity := p_input ->> 'entity';
    v_wait.entity_id := p_input ->> 'id';
    v_wait.condition := p_input -> 'condition';
  else
    v_wait.event_key := p_input ->> 'event';
    -- in the order the matcher lists a step's match keys (see shapes there)
    select
      coalesce(array_agg(k.key order by pg_catalog.convert_to(k.key, 'UTF8')), '{}'),
      coalesce(array_agg(k.value #>> '{}' order by pg_catalog.convert_to(k.key, 'UTF8')), '{}')
    into v_wait.match_paths, v_wait.match_values
    from jsonb_each(coalesce(p_input -> 'match', '{}')) as k;
    v_wait.since := conveyor.wait_since(p_exec, p_input -> 'since', p_now, p_where || '.wait_for_event');
    v_output := v_output || jsonb_build_object('since', v_wait.since);
  end if;

  v_hit := conveyor.wait_hit(v_wait, null, true);
  if v_hit is not null then
    -- an event of this dispatch's own batch, taken here before the batch's waits are
    -- matched, is not "no wait matched" there (conveyor.wait_answers reads this list)
    if v_hit -> 'event' ->> 'event_id' is not null then
      perform pg_catalog.set_config(
        'conveyor.events_taken_by_waits',
        coalesce(pg_catalog.current_setting('conveyor.events_taken_by_waits', true), '')
        || (v_hit -> 'event' ->> 'event_id') || ',',
        true
      );
    end if;
    return v_output || '{"timed_out": false}' || v_hit;
  end if;
  insert into conveyor.waits as w
  select v_wait.*
  on conflict (execution_id) do update
    set tenant_id = excluded.tenant_id, event_key = excluded.event_key, match_paths = excluded.match_paths,
      match_values = excluded.match_values, since = excluded.since, entity = excluded.entity,
      entity_id = excluded.entity_id, condition = excluded.condition, step_id = excluded.step_id,
      registered_at = excluded.registered_at, registered_by = excluded.registered_by, confirmed = false;
  return v_output;
end;
$$;

revoke all on function conveyor.wait_begin(
  conveyor.executions, text, text, jsonb, timestamptz, timestamptz, boolean, text
) from public;

-- Ends the waits of p_ids (executions the caller holds locked, each still waiting at its
-- registered step): with p_hits[i] (an answer from wait_hit or the matcher) on the event
-- branch, or with null on the timeout branch. The step run records the answer, the
-- registration is removed and each execution runs on. Returns how many were resumed.
create or replace function conveyor.wait_take(p_ids bigint[], p_hits jsonb[], p_now timestamptz)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_ids bigint[];
  v_gone bigint;
begin
  if coalesce(pg_catalog.cardinality(p_ids), 0) = 0 then
    return 0;
  end if;
  with target as (
    select
      u.id, u.hit, x.current_step,
      case
        when u.hit is not null and s.branches ? 'event' then s.branches ->> 'event'
        when u.hit is null and s.branches ? 'timeout' then s.branches ->> 'timeout'
        else s.next_step
      end as next_step
    from unnest(p_ids, p_hits) as u (id, hit)
    join conveyor.executions as x on x.execution_id = u.id
    left join conveyor.waits as w on w.execution_id = u.id
    join conveyor.workflow_steps as s
      on s.workflow_id = x.workflow_id and s.version = x.version and s.step_id = x.current_step
    where x.status = 'waiting' and x.wait_kind = 'event' and (w.step_id is null or w.step_id = x.current_step)
  ),

  runs as (
    update conveyor.step_runs as r
    set
      status = 'completed',
      finished_at = now(),
      next_step = t.next_step,
      output = coalesce(r.output, '{}') || case
        when t.hit is null then jsonb_build_object('timed_out', true, 'event', null, 'resumed_at', p_now)
        else '{"timed_out": false}'::jsonb || t.hit
      end
    from target as t
    where r.execution_id = t.id and r.step_id = t.current_step and r.status = 'running'
    returning r.execution_id, r.output
  ),

  moved as (
    update conveyor.executions as e
    set
      status = 'running',
      wait_kind = null,
      resume_at = null,
      current_step = t.next_step,
      step_outputs = e.step_outputs || jsonb_build_object(t.current_step, jsonb_build_object('output', ru.output))
    from target as t
    join runs as ru on ru.execution_id = t.id
    where e.execution_id = t.id
    returning e.execution_id
  ),

  gone as (
    delete from conveyor.waits as w
    using moved as m
    where w.execution_id = m.execution_id
    returning w.execution_id
  )

  -- both consumed, so neither data-modifying branch can be skipped
  select (select array_agg(m.execution_id order by m.execution_id) from moved as m), (select count(*) from gone)
  into v_ids, v_gone;

  if v_ids is not null then
    perform conveyor.advance_executions(v_ids, p_now);
  end if;
  return coalesce(pg_catalog.cardinality(v_ids), 0);
end;
$$;

revoke all on function conveyor.wait_take(bigint[], jsonb[], timestamptz) from public;
