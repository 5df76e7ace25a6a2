-- Work budgets (docs/limits.md, "Event chains, executions and tenants"). A workflow that
-- emits events which start workflows that emit again is bounded in breadth as well as
-- depth: per execution (the events it may emit), per event chain (the events and the
-- executions descending from one platform event) and per tenant (events dispatched per
-- minute, executions active at once). A spent budget fails the step that would exceed it
-- (emit) or starts nothing for the event (dispatch), with a message naming the budget,
-- what was spent and the setting; it never stops another tenant's or another chain's work.

-- The emit step: a new event caused by p_exec, charged to the execution's and its chain's
-- budgets. Raised errors fail the step; its subtransaction rolls the charge back with it.
create or replace function conveyor.emit_from_execution(p_exec conveyor.executions, p_input jsonb)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_max_emits bigint := conveyor.limit_setting('max_emits_per_execution', 100);
  v_max_chain bigint := conveyor.limit_setting('max_chain_events', 1000);
  v_emitted bigint;
  v_root bigint;
  v_event_id bigint;
  v_spent integer;
begin
  select count(*) into v_emitted
  from conveyor.events as e
  where e.caused_by_execution_id = p_exec.execution_id;
  if v_emitted >= v_max_emits then
    raise exception using
      errcode = '54000',
      message = format(
        'emit budget spent: execution %s has emitted %s events, its limit is %s',
        p_exec.execution_id, v_emitted, v_max_emits),
      hint = 'a loop through an emit step? the limit is the setting conveyor.max_emits_per_execution';
  end if;

  -- The chain is the trigger event's (an execution without one, a manual run, starts a
  -- chain with each event it emits).
  if p_exec.event_id is not null then
    select coalesce(e.root_event_id, e.event_id) into v_root
    from conveyor.events as e
    where e.event_id = p_exec.event_id;
  end if;

  insert into conveyor.events (
    tenant_id, event_type, source, entity_type, entity_id, payload, depth, caused_by_execution_id,
    root_event_id
  )
  values (
    p_exec.tenant_id, p_input ->> 'event', 'workflow', p_input ->> 'entity_type',
    p_input ->> 'entity_id', coalesce(p_input -> 'payload', '{}'), p_exec.depth + 1,
    p_exec.execution_id, v_root
  )
  returning event_id into v_event_id;

  insert into conveyor.event_chains as c (root_event_id, tenant_id, events)
  values (coalesce(v_root, v_event_id), p_exec.tenant_id, 1)
  on conflict (root_event_id) do update
    set events = c.events + 1, updated_at = now()
  returning c.events into v_spent;
  if v_spent > v_max_chain then
    raise exception using
      errcode = '54000',
      message = format(
        'event chain budget spent: the chain of event %s has emitted %s events, its limit is %s',
        coalesce(v_root, v_event_id), v_spent - 1, v_max_chain),
      hint = 'workflows that trigger each other? the limit is the setting conveyor.max_chain_events';
  end if;

  perform pg_catalog.pg_notify('conveyor_wakeup', 'event');
  return jsonb_build_object('event_id', v_event_id, 'event_type', p_input ->> 'event');
end;
$$;

-- Counts a claimed batch's events in their tenants' event rates (this backend's shard of
-- this minute; p_tenants holds each event's tenant) and says whether any of those tenants
-- is near its event rate or active executions budget, so that dispatch must weigh the
-- batch event by event (conveyor.budget_refusals). Reading a tenant's other shards and its
-- workflows' counters costs more than the count itself, so that check runs only when the
-- previous one found the tenant near (within 16 steps of a limit: one per shard), at a
-- shard's first batch of a minute, and whenever the shard's count crosses a step of a
-- thousandth of the smaller limit. Between checks a tenant gains less than a step per
-- shard, less than the margin, so no budget is passed between two checks (each event
-- counted as one execution, as budget_refusals counts them).
create or replace function conveyor.count_tenant_events(
  p_tenants text[],
  p_rate_limit bigint,
  p_active_limit bigint
)
returns boolean
language plpgsql
set search_path = ''
as $$
declare
  v_shard smallint := conveyor.stats_shard();
  v_minute timestamptz := pg_catalog.date_trunc('minute', now());
  v_step bigint := greatest(1, least(p_rate_limit, p_active_limit) / 1000);
  v_tenant text;
  v_n integer;
  v_events integer;
  v_was_near boolean;
  v_near boolean;
  v_any_near boolean := false;
begin
  for v_tenant, v_n in
    select u.tenant_id, count(*)::integer
    from pg_catalog.unnest(p_tenants) as u (tenant_id)
    group by u.tenant_id
    order by u.tenant_id  -- the rows are locked in one order by every dispatcher
  loop
    insert into conveyor.tenant_event_rates as r (tenant_id, minute, shard, events)
    values (v_tenant, v_minute, v_shard, v_n)
    on conflict (tenant_id, minute, shard) do update set events = r.events + excluded.events
    returning r.events, r.near_budget into v_events, v_was_near;
    continue when not v_was_near and v_events > v_n and (v_events - v_n) / v_step = v_events / v_step;

    select
      p_rate_limit - v_events - coalesce((
        select sum(r.events) from conveyor.tenant_event_rates as r
        where r.tenant_id = v_tenant and r.minute = v_minute and r.shard <> v_shard
      ), 0) <= 16 * v_step
      or p_active_limit - coalesce((
        select sum(s.started - s.completed - s.failed - s.cancelled - s.timed_out)
        from conveyor.workflow_stats as s
        where s.tenant_id = v_tenant
      ), 0) <= 16 * v_step
    into v_near;
    if v_near <> v_was_near then
      update conveyor.tenant_event_rates as r set near_budget = v_near
      where r.tenant_id = v_tenant and r.minute = v_minute and r.shard = v_shard;
    end if;
    v_any_near := v_any_near or v_near;
  end loop;
  return v_any_near;
end;
$$;

-- The events of a dispatch batch (conveyor.dispatch_events) that a budget refuses, with
-- the budget's name: {"<event_id>": "tenant_event_rate" | "tenant_active_limit" |
-- "chain_budget"}. Called only when the batch holds emitted events or a tenant near a
-- budget, after the batch's events were counted in the tenant's event rate. Each event
-- counts as one execution against the active and chain budgets (an event that starts
-- several executions may pass the budget by the others; the chain's count of executions is
-- exact: dispatch adds what it started).
create or replace function conveyor.budget_refusals(
  p_events bigint[],
  p_rate_limit bigint,
  p_active_limit bigint,
  p_chain_limit bigint
)
returns jsonb
language sql
stable
set search_path = ''
as $$
  with ev as (
    select
      e.event_id, e.tenant_id, c.chain_root,
      row_number() over (partition by e.tenant_id order by e.event_id) as nth_of_tenant,
      count(*) over (partition by e.tenant_id) as batch_of_tenant,
      row_number() over (partition by c.chain_root order by e.event_id) as nth_in_chain
    from conveyor.events as e
    cross join lateral (
      select case when e.depth > 0 then coalesce(e.root_event_id, e.event_id) end as chain_root
    ) as c
    where e.event_id = any(p_events)
  ),
  tenants as (
    select
      t.tenant_id,
      (
        select coalesce(sum(r.events), 0) from conveyor.tenant_event_rates as r
        where r.tenant_id = t.tenant_id and r.minute = pg_catalog.date_trunc('minute', now())
      ) as counted,
      (
        select coalesce(sum(s.started - s.completed - s.failed - s.cancelled - s.timed_out), 0)
        from conveyor.workflow_stats as s
        where s.tenant_id = t.tenant_id
      ) as active
    from (select distinct ev.tenant_id from ev) as t
  )
  select pg_catalog.jsonb_object_agg(j.event_id::text, j.reason)
  from (
    select
      ev.event_id,
      case
        when t.counted - ev.batch_of_tenant + ev.nth_of_tenant > p_rate_limit then 'tenant_event_rate'
        when t.active + ev.nth_of_tenant > p_active_limit then 'tenant_active_limit'
        when ev.chain_root is not null
          and coalesce(ch.executions, 0) + ev.nth_in_chain > p_chain_limit then 'chain_budget'
      end as reason
    from ev
    join tenants as t on t.tenant_id = ev.tenant_id
    left join conveyor.event_chains as ch on ch.root_event_id = ev.chain_root
  ) as j
  where j.reason is not null;
$$;

-- Budget rows that can no longer refuse anything are forgotten: event chains that spent
-- nothing for a week (their events are history by then; a chain resumed later, after a
-- long delay, starts counting again) and past minutes' event rates. Called by
-- conveyor.prune_history.
create or replace function conveyor.prune_budgets(p_now timestamptz default now())
returns integer
language plpgsql
set search_path = ''
as $$
declare
  v_chains integer;
  v_rates integer;
begin
  delete from conveyor.event_chains as c where c.updated_at < p_now - interval '7 days';
  get diagnostics v_chains = row_count;
  delete from conveyor.tenant_event_rates as r where r.minute < p_now - interval '1 hour';
  get diagnostics v_rates = row_count;
  return v_chains + v_rates;
end;
$$;

revoke all on function conveyor.emit_from_execution(conveyor.executions, jsonb) from public;
revoke all on function conveyor.count_tenant_events(text[], bigint, bigint) from public;
revoke all on function conveyor.budget_refusals(bigint[], bigint, bigint, bigint) from public;
revoke all on function conveyor.prune_budgets(timestamptz) from public;
grant execute on function conveyor.prune_budgets(timestamptz) to conveyor_service;
