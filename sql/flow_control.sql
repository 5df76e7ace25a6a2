-- Flow control of a workflow's executions (docs/flow-control.md): the settings
-- `concurrency: {key, limit}`, `debounce: {key, period}` and `throttle: {key, limit,
-- period}`. Their keys are templates over the trigger ({{trigger.entity_id}}), rendered when
-- an event is dispatched. Dispatch hands the executions it would start for such workflows
-- to conveyor.flow_control, which refuses (throttle), folds (debounce) or queues
-- (concurrency) them; the rest run at once. A finishing execution gives its slot to the
-- next one queued on its key (conveyor.flow_release), and the tick runs those and the
-- debounced executions whose period is over (conveyor.flow_due).
--
-- Exactly-once and never over-admitted: every change to a key's slots is made under the
-- row lock of its conveyor.flow_slots row, taken by upsert (it exists or is created
-- locked), several keys always in (workflow_id, key) order.

-- The longest key kept, in characters: keys are primary-key values.
create or replace function conveyor.max_flow_key_length()
returns integer
language sql
stable
set search_path = ''
as $$
  select conveyor.limit_setting('max_flow_key_length', 500)::integer;
$$;

-- The problems of settings.concurrency / debounce / throttle, with their paths.
create or replace function conveyor.document_flow_errors(p_settings jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_name text;
  v_spec jsonb;
  v_path text;
begin
  foreach v_name in array array['concurrency', 'debounce', 'throttle'] loop
    continue when not p_settings ? v_name;
    v_spec := p_settings -> v_name;
    v_path := 'settings.' || v_name;
    if jsonb_typeof(v_spec) is distinct from 'object' then
      return next format('%s: expected an object with %s', v_path,
        case v_name when 'concurrency' then '"key" and "limit"' when 'debounce' then '"key" and "period"'
          else '"key", "limit" and "period"' end);
      continue;
    end if;
    return query
    select k.message
    from conveyor.document_key_errors(
      v_spec, v_path,
      case v_name when 'concurrency' then array['key', 'limit'] when 'debounce' then array['key', 'period']
        else array['key', 'limit', 'period'] end,
      '{}'
    ) as k (message);
    if v_spec ? 'key' then
      if jsonb_typeof(v_spec -> 'key') is distinct from 'string' or btrim(v_spec ->> 'key') = '' then
        return next format('%s.key: expected a template over the trigger, e.g. "{{trigger.entity_id}}" (got %s)',
          v_path, (v_spec -> 'key')::text);
      else
        return query select t.message from conveyor.template_errors(v_spec -> 'key', v_path || '.key', array['trigger']) as t (message);
      end if;
    end if;
    if v_spec ? 'limit' then
      return query
      select e.message
      from (select conveyor.document_integer_error(v_spec -> 'limit', v_path || '.limit', 100000) as message) as e
      where e.message is not null;
    end if;
    if v_spec ? 'period' then
      return query
      select e.message
      from (select conveyor.document_duration_error(v_spec -> 'period', v_path || '.period') as message) as e
      where e.message is not null;
    end if;
  end loop;
end;
$$;

-- The settings compiled for workflow_versions.flow: null when there are none.
create or replace function conveyor.compile_flow(p_settings jsonb)
returns jsonb
language sql
immutable
set search_path = ''
as $$
  select nullif(pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
    'concurrency', case when p_settings ? 'concurrency' then pg_catalog.jsonb_build_object(
      'key', p_settings #>> '{concurrency,key}', 'limit', (p_settings #>> '{concurrency,limit}')::numeric::integer) end,
    'debounce', case when p_settings ? 'debounce' then pg_catalog.jsonb_build_object(
      'key', p_settings #>> '{debounce,key}', 'period', p_settings #>> '{debounce,period}') end,
    'throttle', case when p_settings ? 'throttle' then pg_catalog.jsonb_build_object(
      'key', p_settings #>> '{throttle,key}', 'limit', (p_settings #>> '{throttle,limit}')::numeric::integer,
      'period', p_settings #>> '{throttle,period}') end
  )), '{}'::jsonb);
$$;

-- A flow key rendered from the execution's trigger; p_where names the setting in errors.
create or replace function conveyor.flow_key(p_template text, p_trigger jsonb, p_where text)
returns text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_key text := conveyor.render(pg_catalog.to_jsonb(p_template), pg_catalog.jsonb_build_object('trigger', p_trigger),
    p_where) #>> '{}';
begin
  if pg_catalog.length(v_key) > conveyor.max_flow_key_length() then
    raise exception using errcode = '54000',
      message = format('%s: the key is %s characters, over the limit of %s (setting conveyor.max_flow_key_length)',
        p_where, pg_catalog.length(v_key), conveyor.max_flow_key_length());
  end if;
  return coalesce(v_key, '');
end;
$$;

-- Writes one dispatch refusal line of the flow settings (reason throttle or debounce).
create or replace function conveyor.flow_log(p_exec conveyor.executions, p_reason text, p_message text, p_details jsonb)
returns void
language sql
set search_path = ''
as $$
  insert into conveyor.execution_logs (tenant_id, workflow_id, event_id, level, message, details)
  values (p_exec.tenant_id, p_exec.workflow_id, p_exec.event_id, 'info', p_message,
    pg_catalog.jsonb_build_object('reason', p_reason) || p_details);
$$;

-- Takes concurrency slots: of p_ids (executions of p_workflows, on p_keys, each key's in
-- id order, limits p_limits), those admitted now; the others wait their turn. Locks each
-- key's row in (workflow_id, key) order and counts the admitted in it.
create or replace function conveyor.flow_take_slots(
  p_tenants text[],
  p_workflows bigint[],
  p_keys text[],
  p_ids bigint[],
  p_limits integer[]
)
returns bigint[]
language plpgsql
set search_path = ''
as $$
declare
  v_admitted bigint[];
  v_locked integer;
begin
  -- each key's row, locked (an upsert takes the row lock whether the row existed or
  -- not), in key order
  with locked as (
    insert into conveyor.flow_slots as s (tenant_id, workflow_id, key)
    select distinct w.tenant_id, w.workflow_id, w.key
    from unnest(p_tenants, p_workflows, p_keys) as w (tenant_id, workflow_id, key)
    order by 2, 3
    on conflict (workflow_id, key) do update set running = s.running
    returning 1
  )
  select count(*) into v_locked from locked;

  -- each key's first executions, as many as it has free slots; executions already queued
  -- on a key go first (a new one is admitted only behind them)
  select array_agg(w.id order by w.id) into v_admitted
  from (
    select w.workflow_id, w.key, w.id, w.lim,
      pg_catalog.row_number() over (partition by w.workflow_id, w.key order by w.id) as nth
    from unnest(p_workflows, p_keys, p_ids, p_limits) as w (workflow_id, key, id, lim)
  ) as w
  join conveyor.flow_slots as s on s.workflow_id = w.workflow_id and s.key = w.key
  where w.nth <= w.lim - s.running - (
    select count(*) from conveyor.executions as q
    where q.workflow_id = w.workflow_id and q.flow_key = w.key and q.status = 'waiting' and q.wait_kind = 'slot'
      and q.resume_at is null
  );

  update conveyor.flow_slots as s
  set running = s.running + a.n
  from (
    select w.workflow_id, w.key, count(*)::integer as n
    from unnest(p_workflows, p_keys, p_ids) as w (workflow_id, key, id)
    where w.id = any(v_admitted)
    group by 1, 2
  ) as a
  where s.workflow_id = a.workflow_id and s.key = a.key;
  return coalesce(v_admitted, '{}');
end;
$$;

-- The flow settings applied to executions dispatch would start (p_new, not yet written):
-- returns those to run now. Throttled ones are refused and logged; debounced ones are
-- folded into the key's waiting execution or wait as a new one; those over a key's
-- concurrency are written waiting for a slot. The ones written here are counted as started.
create or replace function conveyor.flow_control(p_new conveyor.executions[])
returns conveyor.executions[]
language plpgsql
set search_path = ''
as $$
declare
  v_exec conveyor.executions;
  v_flow jsonb;
  v_flows jsonb := '{}';
  v_keep conveyor.executions[] := '{}';
  v_slotted conveyor.executions[] := '{}';
  v_written conveyor.executions[] := '{}';
  v_key text;
  v_window timestamptz;
  v_period interval;
  v_started integer;
  v_folded record;
  v_admitted bigint[];
begin
  select pg_catalog.jsonb_object_agg(v.workflow_id::text, v.flow) into v_flows
  from conveyor.workflow_versions as v
  where (v.workflow_id, v.version) in (select x.workflow_id, x.version from unnest(p_new) as x)
    and v.flow is not null;

  foreach v_exec in array p_new loop
    v_flow := v_flows -> v_exec.workflow_id::text;
    if v_flow is null then
      v_keep := v_keep || v_exec;
      continue;
    end if;

    if v_flow ? 'throttle' then
      v_key := conveyor.flow_key(v_flow #>> '{throttle,key}', v_exec.trigger, 'settings.throttle.key');
      v_period := conveyor.parse_duration(v_flow #>> '{throttle,period}');
      v_window := pg_catalog.to_timestamp(
        floor(extract(epoch from now()) / extract(epoch from v_period)) * extract(epoch from v_period));
      delete from conveyor.flow_throttles as t
      where t.workflow_id = v_exec.workflow_id and t.key = v_key and t.window_start < v_window;
      insert into conveyor.flow_throttles as t (tenant_id, workflow_id, key, window_start, started)
      values (v_exec.tenant_id, v_exec.workflow_id, v_key, v_window, 1)
      on conflict (workflow_id, key, window_start) do update set started = t.started + 1
      returning t.started into v_started;
      if v_started > (v_flow #>> '{throttle,limit}')::integer then
        perform conveyor.flow_log(v_exec, 'throttle',
          format('event %s started no execution: workflow %s is throttled to %s executions per %s on key %L',
            v_exec.event_id, v_exec.workflow_id, v_flow #>> '{throttle,limit}', v_flow #>> '{throttle,period}', v_key),
          pg_catalog.jsonb_build_object('key', v_key, 'limit', (v_flow #>> '{throttle,limit}')::integer,
            'period', v_flow #>> '{throttle,period}'));
        continue;
      end if;
    end if;

    if v_flow ? 'debounce' then
      v_key := conveyor.flow_key(v_flow #>> '{debounce,key}', v_exec.trigger, 'settings.debounce.key');
      v_period := conveyor.parse_duration(v_flow #>> '{debounce,period}');
      -- the key's waiting execution takes this event as its trigger and waits a period more
      select d.execution_id, d.events, x.event_id as previous_event into v_folded
      from conveyor.flow_debounces as d
      join conveyor.executions as x on x.execution_id = d.execution_id
        and x.status = 'waiting' and x.wait_kind = 'debounce'
      where d.workflow_id = v_exec.workflow_id and d.key = v_key
      for update of d, x;
      if v_folded.execution_id is not null then
        update conveyor.executions as x
        set trigger = v_exec.trigger, event_id = v_exec.event_id, entity_type = v_exec.entity_type,
          entity_id = v_exec.entity_id, resume_at = now() + v_period
        where x.execution_id = v_folded.execution_id;
        update conveyor.flow_debounces as d set events = d.events + 1
        where d.workflow_id = v_exec.workflow_id and d.key = v_key;
        perform conveyor.flow_log(v_exec, 'debounce',
          format('event %s started no execution of workflow %s: it replaced event %s as the trigger of'
            || ' execution %s, debounced on key %L until %s of quiet', v_exec.event_id, v_exec.workflow_id,
            v_folded.previous_event, v_folded.execution_id, v_key, v_flow #>> '{debounce,period}'),
          pg_catalog.jsonb_build_object('key', v_key, 'execution_id', v_folded.execution_id,
            'replaced_event_id', v_folded.previous_event));
        continue;
      end if;
      -- written at once: the next event of the burst, in this batch too, folds into it
      v_exec.status := 'waiting';
      v_exec.wait_kind := 'debounce';
      v_exec.resume_at := now() + v_period;
      insert into conveyor.executions overriding system value select v_exec.*;
      perform conveyor.record_started(array[v_exec]);
      insert into conveyor.flow_debounces as d (tenant_id, workflow_id, key, execution_id)
      values (v_exec.tenant_id, v_exec.workflow_id, v_key, v_exec.execution_id)
      on conflict (workflow_id, key) do update set execution_id = excluded.execution_id, events = 1;
      continue;
    end if;

    if v_flow ? 'concurrency' then
      v_exec.flow_key := conveyor.flow_key(v_flow #>> '{concurrency,key}', v_exec.trigger, 'settings.concurrency.key');
      v_slotted := v_slotted || v_exec;
      continue;
    end if;
    v_keep := v_keep || v_exec;
  end loop;

  if pg_catalog.cardinality(v_slotted) > 0 then
    v_admitted := conveyor.flow_take_slots(
      array(select x.tenant_id from unnest(v_slotted) as x), array(select x.workflow_id from unnest(v_slotted) as x),
      array(select x.flow_key from unnest(v_slotted) as x), array(select x.execution_id from unnest(v_slotted) as x),
      array(select (v_flows #>> array[x.workflow_id::text, 'concurrency', 'limit'])::integer from unnest(v_slotted) as x)
    );
    foreach v_exec in array v_slotted loop
      if v_exec.execution_id = any(v_admitted) then
        v_keep := v_keep || v_exec;
      else
        v_exec.status := 'waiting';
        v_exec.wait_kind := 'slot';
        v_written := v_written || v_exec;
      end if;
    end loop;
  end if;

  if pg_catalog.cardinality(v_written) > 0 then
    insert into conveyor.executions overriding system value
    select x.* from unnest(v_written) as x;
    perform conveyor.record_started(v_written);
  end if;
  return (select coalesce(array_agg(k order by (k).execution_id), '{}') from unnest(v_keep) as k);
end;
$$;

-- Concurrency per key for an execution started without an event (a manual run, a
-- schedule's, a retry: conveyor.start_workflow, conveyor.retry_execution), already written
-- as pending: true when it may run now (its version has no concurrency setting, or a slot
-- was free and is now its own); false when it waits for a slot in its key's queue, as a
-- dispatched one would. Debounce and throttle shape bursts of events and leave these alone.
create or replace function conveyor.flow_admit_started(p_execution_id bigint)
returns boolean
language plpgsql
set search_path = ''
as $$
declare
  v_exec conveyor.executions;
  v_concurrency jsonb;
  v_admitted bigint[];
begin
  select e.* into v_exec from conveyor.executions as e where e.execution_id = p_execution_id;
  select v.flow -> 'concurrency' into v_concurrency from conveyor.workflow_versions as v
  where v.workflow_id = v_exec.workflow_id and v.version = v_exec.version;
  if v_concurrency is null then
    return true;
  end if;
  v_exec.flow_key := conveyor.flow_key(v_concurrency ->> 'key', v_exec.trigger, 'settings.concurrency.key');
  v_admitted := conveyor.flow_take_slots(
    array[v_exec.tenant_id], array[v_exec.workflow_id], array[v_exec.flow_key], array[p_execution_id],
    array[(v_concurrency ->> 'limit')::integer]
  );
  update conveyor.executions as e
  set flow_key = v_exec.flow_key,
    status = case when p_execution_id = any(v_admitted) then e.status else 'waiting' end,
    wait_kind = case when p_execution_id = any(v_admitted) then e.wait_kind else 'slot' end
  where e.execution_id = p_execution_id;
  return p_execution_id = any(v_admitted);
end;
$$;

-- Gives up the slots of executions that ended (p_workflows[i], p_keys[i]: one per
-- execution) and admits the next ones queued on those keys, oldest first: they become due
-- at once, and the tick runs them (conveyor.flow_due). A key with nothing running or
-- queued loses its row.
create or replace function conveyor.flow_release(p_workflows bigint[], p_keys text[])
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_slot record;
  v_limit integer;
  v_admitted integer;
begin
  for v_slot in
    with freed as (
      select r.workflow_id, r.key, count(*)::integer as n
      from unnest(p_workflows, p_keys) as r (workflow_id, key)
      group by 1, 2
    )
    update conveyor.flow_slots as s
    set running = greatest(s.running - f.n, 0)
    from (select * from freed order by workflow_id, key) as f
    where s.workflow_id = f.workflow_id and s.key = f.key
    returning s.workflow_id, s.key, s.running
  loop
    select (v.flow #>> '{concurrency,limit}')::integer into v_limit
    from conveyor.workflow_versions as v
    where v.workflow_id = v_slot.workflow_id and v.flow ? 'concurrency'
    order by v.version desc
    limit 1;
    with next as (
      select q.execution_id
      from conveyor.executions as q
      where q.workflow_id = v_slot.workflow_id and q.flow_key = v_slot.key and q.status = 'waiting'
        and q.wait_kind = 'slot' and q.resume_at is null
      order by q.execution_id
      limit greatest(coalesce(v_limit, 1) - v_slot.running, 0)
      for update skip locked
    )
    update conveyor.executions as q
    set resume_at = now()
    from next
    where q.execution_id = next.execution_id;
    get diagnostics v_admitted = row_count;
    if v_admitted > 0 then
      update conveyor.flow_slots as s set running = s.running + v_admitted
      where s.workflow_id = v_slot.workflow_id and s.key = v_slot.key;
    elsif v_slot.running = 0 and not exists (
      select from conveyor.executions as q
      where q.workflow_id = v_slot.workflow_id and q.flow_key = v_slot.key and q.status = 'waiting'
        and q.wait_kind = 'slot'
    ) then
      delete from conveyor.flow_slots as s where s.workflow_id = v_slot.workflow_id and s.key = v_slot.key;
    end if;
  end loop;
end;
$$;

-- When the next admitted execution or ended debounce period is due (null: none).
create or replace function conveyor.flow_next_due_at()
returns timestamptz
language plpgsql
stable
set search_path = ''
as $$
begin
  return (
    select e.resume_at
    from conveyor.executions as e
    where e.status = 'waiting' and e.wait_kind in ('slot', 'debounce') and e.resume_at is not null
      and e.paused_at is null
    order by e.resume_at, e.execution_id
    limit 1
  );
end;
$$;

-- Runs what flow control let through since: executions admitted to a slot, and debounced
-- executions whose period is over (which take a slot first when their workflow has a
-- concurrency setting). Returns how many it started or queued.
create or replace function conveyor.flow_due(p_now timestamptz, p_limit integer)
returns integer
language plpgsql
set search_path = ''
as $$
declare
  v_due conveyor.executions[];
  v_exec conveyor.executions;
  v_run bigint[] := '{}';
  v_slotted conveyor.executions[] := '{}';
  v_admitted bigint[];
  v_flow jsonb;
begin
  if not coalesce(conveyor.flow_next_due_at() <= p_now, false) then
    return 0;
  end if;
  select array_agg(e order by e.resume_at, e.execution_id) into v_due
  from (
    select e.*
    from conveyor.executions as e
    where e.status = 'waiting' and e.wait_kind in ('slot', 'debounce') and e.resume_at <= p_now
      and e.resume_at is not null and e.paused_at is null
    order by e.resume_at, e.execution_id
    limit p_limit
    for update skip locked
  ) as e;
  if v_due is null then
    return 0;
  end if;

  foreach v_exec in array v_due loop
    if v_exec.wait_kind = 'debounce' then
      delete from conveyor.flow_debounces as d where d.execution_id = v_exec.execution_id;
      select v.flow into v_flow from conveyor.workflow_versions as v
      where v.workflow_id = v_exec.workflow_id and v.version = v_exec.version;
      if v_flow ? 'concurrency' then
        v_exec.flow_key := conveyor.flow_key(v_flow #>> '{concurrency,key}', v_exec.trigger, 'settings.concurrency.key');
        v_slotted := v_slotted || v_exec;
        continue;
      end if;
    end if;
    v_run := v_run || v_exec.execution_id;
  end loop;

  if pg_catalog.cardinality(v_slotted) > 0 then
    v_admitted := conveyor.flow_take_slots(
      array(select x.tenant_id from unnest(v_slotted) as x), array(select x.workflow_id from unnest(v_slotted) as x),
      array(select x.flow_key from unnest(v_slotted) as x), array(select x.execution_id from unnest(v_slotted) as x),
      array(
        select (v.flow #>> '{concurrency,limit}')::integer
        from unnest(v_slotted) with ordinality as x
        join conveyor.workflow_versions as v on v.workflow_id = x.workflow_id and v.version = x.version
        order by x.ordinality
      )
    );
    update conveyor.executions as e
    set flow_key = x.flow_key, wait_kind = 'slot', resume_at = null
    from unnest(v_slotted) as x
    where e.execution_id = x.execution_id and x.execution_id <> all(v_admitted);
    update conveyor.executions as e
    set flow_key = x.flow_key
    from unnest(v_slotted) as x
    where e.execution_id = x.execution_id and x.execution_id = any(v_admitted);
    v_run := v_run || v_admitted;
  end if;

  if pg_catalog.cardinality(v_run) > 0 then
    update conveyor.executions as e
    set status = 'pending', wait_kind = null, resume_at = null
    where e.execution_id = any(v_run);
    perform conveyor.advance_executions(v_run, p_now);
  end if;
  return pg_catalog.cardinality(v_due);
end;
$$;
