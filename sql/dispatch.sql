-- Dispatch: pending events × active subscriptions → executions, set-based and batched.
--
-- Exactly once: a dispatcher claims pending events with `for update skip locked` and
-- stamps dispatched_at in the same transaction that creates their executions. Several
-- dispatchers (runners, pg_cron) never claim the same event; a rollback releases it.
--
-- Matching does not grow with the number of subscriptions on other event types: each
-- event type expands into its four match keys ('crm.deal.won', 'crm.deal.*', 'crm.*',
-- '*') joined by equality on subscriptions_match_idx.
--
-- Workflow settings are honoured with a visible reason (an execution_logs line) instead
-- of silently: run once per entity, executions per hour, concurrent executions, and the
-- event chain depth limit (setting conveyor.max_event_depth, default 10).

-- The trigger object templates and conditions see as {{trigger...}}.
create or replace function conveyor.event_trigger_object(p_event conveyor.events)
returns jsonb
language sql
immutable
parallel safe
set search_path = ''
as $$
  select jsonb_build_object(
    'event_id', p_event.event_id,
    'event_type', p_event.event_type,
    'source', p_event.source,
    'entity_type', p_event.entity_type,
    'entity_id', p_event.entity_id,
    'payload', p_event.payload,
    'changed_columns', to_jsonb(p_event.changed_columns),
    'occurred_at', p_event.occurred_at,
    'depth', p_event.depth
  );
$$;

-- The match keys of an event type: itself and its wildcard patterns.
create or replace function conveyor.event_match_keys(p_event_type text)
returns text[]
language sql
immutable
parallel safe
set search_path = ''
as $$
  select array[
    p_event_type,
    split_part(p_event_type, '.', 1) || '.' || split_part(p_event_type, '.', 2) || '.*',
    split_part(p_event_type, '.', 1) || '.*',
    '*'
  ];
$$;

create or replace function conveyor.max_event_depth()
returns integer
language sql
stable
set search_path = ''
as $$
  select coalesce(nullif(current_setting('conveyor.max_event_depth', true), '')::integer, 10);
$$;

-- A trigger condition's verdict, or the error that kept it from one (a template in the
-- condition's value with nothing behind it, say): one bad event must not stop dispatch.
create or replace function conveyor.try_eval_condition(
  p_condition jsonb,
  p_context jsonb,
  out holds boolean,
  out error text
)
language plpgsql
stable
-- strict: a subscription without a condition (null) skips the call (and its subtransaction)
-- instead of evaluating and discarding it for every matched event
strict
set search_path = ''
as $$
begin
  holds := conveyor.eval_condition(p_condition, p_context);
exception when others then
  holds := null;
  error := sqlerrm;
end;
$$;

drop function if exists conveyor.dispatch(integer);
-- Claims up to p_limit pending events (fairly between tenants), dispatches them (conveyor.dispatch_contained) and
-- stamps them dispatched.
create or replace function conveyor.dispatch(p_limit integer default 1000)
returns integer
language plpgsql
set search_path = ''
set jit = off
as $$
declare
  v_events bigint[];
  v_tenants text[];
  v_chained boolean;
  v_near_budget boolean;
  v_quotas jsonb;
begin
  -- watched tables' captured rows become events first (sql/ingest.sql)
  perform conveyor.ingest_captures(p_limit);

  select array_agg(c.event_id order by c.event_id), array_agg(c.tenant_id), bool_or(c.depth > 0)
  into v_events, v_tenants, v_chained
  from conveyor.claim_events(p_limit) as c;
  if v_events is null then
    return 0;
  end if;

  -- The batch counts in its tenants' event rates (once, whatever containment retries). Its
  -- events are weighed against the tenant and chain budgets one by one only when it holds
  -- emitted events (members of a chain) or a tenant near a budget (sql/budgets.sql).
  v_near_budget := conveyor.count_tenant_events(
    v_tenants,
    conveyor.limit_setting('max_tenant_events_per_minute', 600000),
    conveyor.limit_setting('max_tenant_active_executions', 1000000)
  );
  -- The batch's tenants whose plans limit executions per month (sql/quotas.sql): null,
  -- after one query, when there are none; else their counts, locked until commit.
  v_quotas := conveyor.lock_execution_quotas(v_tenants, now());
  perform conveyor.dispatch_contained(v_events, v_chained or v_near_budget, v_quotas);

  update conveyor.events
  set dispatched_at = now()
  where event_id = any(v_events);
  return pg_catalog.cardinality(v_events);
end;
$$;

-- Dispatches claimed events (conveyor.dispatch_events) in a subtransaction. Containment:
-- when that fails on something in the events' data (any error but the transient ones,
-- conveyor.error_is_transient), the events are halved and each half dispatched again,
-- down to the event that fails alone: it starts nothing and is logged with its error
-- (reason dispatch_error), and the caller stamps it dispatched like the others. One poison
-- event never stops dispatch for anyone, and costs about 2 log2(n) retries in a batch of n.
drop function if exists conveyor.dispatch_contained(bigint[]);
drop function if exists conveyor.dispatch_contained(bigint[], boolean);
create or replace function conveyor.dispatch_contained(p_events bigint[], p_weigh_budgets boolean, p_quotas jsonb)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_n integer := pg_catalog.cardinality(p_events);
  v_state text;
  v_msg text;
  v_detail text;
begin
  begin
    perform conveyor.dispatch_events(p_events, p_weigh_budgets, p_quotas);
    return;
  exception when others then
    get stacked diagnostics v_state = returned_sqlstate, v_msg = message_text, v_detail = pg_exception_detail;
    if conveyor.error_is_transient(v_state) then
      raise;
    end if;
  end;
  if v_n = 1 then
    insert into conveyor.execution_logs (tenant_id, event_id, level, message, details)
    select e.tenant_id, e.event_id, 'error',
      format('event %s (%s) started nothing: dispatching it failed: %s', e.event_id, e.event_type, v_msg),
      jsonb_build_object('reason', 'dispatch_error', 'sqlstate', v_state, 'error', v_msg,
        'detail', nullif(v_detail, ''))
    from conveyor.events as e
    where e.event_id = p_events[1];
  elsif v_n > 1 then
    perform conveyor.dispatch_contained(p_events[1:v_n / 2], p_weigh_budgets, p_quotas);
    perform conveyor.dispatch_contained(p_events[v_n / 2 + 1:v_n], p_weigh_budgets, p_quotas);
  end if;
end;
$$;

-- Dispatches claimed events (the caller holds their row locks and stamps them): resumes
-- the executions waiting for them, starts the executions their subscriptions call for
-- within the workflows' limits, the executions per month p_quotas leaves their tenants
-- (conveyor.lock_execution_quotas; null: no tenant of the batch is limited) and, when
-- p_weigh_budgets, the work budgets event by event (sql/budgets.sql), and runs those
-- executions' first steps.
drop function if exists conveyor.dispatch_events(bigint[]);
drop function if exists conveyor.dispatch_events(bigint[], boolean);
create or replace function conveyor.dispatch_events(
  p_events bigint[],
  p_weigh_budgets boolean default true,
  p_quotas jsonb default null
)
returns void
language plpgsql
set search_path = ''
-- The planner's default estimates for the set-returning calls here can cross
-- jit_above_cost; compiling then costs far more than the query.
set jit = off
as $$
declare
  v_events bigint[] := p_events;
  v_new conveyor.executions[];
  v_flow boolean;
  v_refused bigint;
  v_max_depth integer := conveyor.max_event_depth();
  -- the budgets, read only when the batch is weighed against them
  v_rate_limit bigint;
  v_active_limit bigint;
  v_chain_limit bigint;
  -- the batch's events the budgets refuse, with why: {"<event_id>": "<reason>"}, or null
  -- (the common case: no budget is near, and nothing below looks at them)
  v_budget_refusals jsonb;
  -- the executions the batch starts per event chain
  v_chain_new jsonb;
begin
  if p_weigh_budgets then
    v_rate_limit := conveyor.limit_setting('max_tenant_events_per_minute', 600000);
    v_active_limit := conveyor.limit_setting('max_tenant_active_executions', 1000000);
    v_chain_limit := conveyor.limit_setting('max_chain_executions', 1000);
    v_budget_refusals := conveyor.budget_refusals(v_events, v_rate_limit, v_active_limit, v_chain_limit);
  end if;

  -- Date-based triggers follow the dates their entities' rows carry.
  perform conveyor.track_date_triggers(v_events);

  -- Events past the chain depth limit start nothing; say so once per event.
  insert into conveyor.execution_logs (tenant_id, event_id, level, message, details)
  select e.tenant_id, e.event_id, 'warning',
    format('event %s (%s) was not dispatched: its chain depth %s exceeds the limit %s',
      e.event_id, e.event_type, e.depth, v_max_depth),
    jsonb_build_object('reason', 'depth_limit', 'depth', e.depth, 'limit', v_max_depth,
      'caused_by_execution_id', e.caused_by_execution_id)
  from conveyor.events as e
  where e.event_id = any(v_events) and e.depth > v_max_depth;

  -- Workflows with limits or run once per entity are serialised per workflow (advisory
  -- locks in a fixed order), so concurrent dispatchers cannot both take the last slot or
  -- both start the one execution for an entity.
  perform pg_catalog.pg_advisory_xact_lock(1131, l.workflow_id::integer)
  from (
    select distinct s.workflow_id
    from conveyor.events as e
    join conveyor.subscriptions as s
      -- conveyor.event_match_keys, inlined (see the matched CTE below)
      on s.match_key = any(array[
        e.event_type,
        split_part(e.event_type, '.', 1) || '.' || split_part(e.event_type, '.', 2) || '.*',
        split_part(e.event_type, '.', 1) || '.*',
        '*'
      ])
      and s.tenant_id = e.tenant_id and s.active
    join conveyor.workflow_versions as v on v.workflow_id = s.workflow_id and v.version = s.version
    where e.event_id = any(v_events)
      and (v.max_executions_per_hour is not null or v.max_concurrent is not null or v.run_once_per_entity
        or v.flow is not null)
    order by s.workflow_id
  ) as l;

  with matched as (
    select
      e.event_id, e.tenant_id, e.entity_type, e.entity_id, e.depth,
      case when e.depth > 0 then coalesce(e.root_event_id, e.event_id) end as chain_root,
      s.workflow_id, s.version, v.timeout, v.max_executions_per_hour, v.max_concurrent,
      v.entry_step, v.flow is not null as flow, t.trigger_object, c.error as condition_error,
      case when v.run_once_per_entity and e.entity_id is not null
        then coalesce(e.entity_type, '') || ':' || e.entity_id end as once_key
    from conveyor.events as e
    -- conveyor.event_trigger_object and conveyor.event_match_keys, inlined: functions with
    -- their own search_path are not inlined by the planner, and this is the hot path
    cross join lateral (
      select
        jsonb_build_object(
          'event_id', e.event_id,
          'event_type', e.event_type,
          'source', e.source,
          'entity_type', e.entity_type,
          'entity_id', e.entity_id,
          'payload', e.payload,
          'changed_columns', to_jsonb(e.changed_columns),
          'occurred_at', e.occurred_at,
          'depth', e.depth
        ) as trigger_object,
        array[
          e.event_type,
          split_part(e.event_type, '.', 1) || '.' || split_part(e.event_type, '.', 2) || '.*',
          split_part(e.event_type, '.', 1) || '.*',
          '*'
        ] as match_keys
    ) as t
    join conveyor.subscriptions as s
      on s.match_key = any(t.match_keys)
      and s.tenant_id = e.tenant_id and s.active
    join conveyor.workflow_versions as v on v.workflow_id = s.workflow_id and v.version = s.version
    left join lateral conveyor.try_eval_condition(
      s.condition, jsonb_build_object('trigger', t.trigger_object, 'now', now())
    ) as c on s.condition is not null
    where e.event_id = any(v_events)
      and e.depth <= v_max_depth
      and (s.source is null or s.source = e.source)
      and (s.filter_path is null or jsonb_path_match(t.trigger_object, s.filter_path))
      and (s.condition is null or c.holds is not false)
  ),

  ranked as (
    select
      m.*,
      row_number() over (partition by m.workflow_id order by m.event_id) as nth_in_batch,
      row_number() over (partition by m.workflow_id, m.once_key order by m.event_id) as nth_for_entity
    from matched as m
  ),

  -- Current load of the workflows that have limits, counted once per workflow.
  workflow_load as (
    select
      l.workflow_id,
      (select count(*) from conveyor.executions as x
        where x.workflow_id = l.workflow_id and x.created_at > now() - interval '1 hour') as last_hour,
      (select count(*) from conveyor.executions as x
        where x.workflow_id = l.workflow_id and x.status in ('pending', 'running', 'waiting')) as active
    from (
      select distinct m.workflow_id from matched as m
      where m.max_executions_per_hour is not null or m.max_concurrent is not null
    ) as l
  ),

  judged_by_workflow as (
    select
      r.*,
      case
        when r.condition_error is not null then 'condition_error'
        when v_budget_refusals ? r.event_id::text then v_budget_refusals ->> r.event_id::text
        when r.once_key is not null and (r.nth_for_entity > 1 or exists (
          select from conveyor.executions as x
          where x.workflow_id = r.workflow_id and x.once_key = r.once_key
        )) then 'run_once'
        when r.nth_in_batch + l.last_hour > r.max_executions_per_hour then 'rate_limit'
        when r.nth_in_batch + l.active > r.max_concurrent then 'concurrency_limit'
      end as workflow_refusal
    from ranked as r
    left join workflow_load as l on l.workflow_id = r.workflow_id
  ),

  -- The plan's executions per month, for limited tenants: the executions the other checks
  -- admit, in event order, until the month's count is spent.
  judged as (
    select
      w.*,
      case
        when w.workflow_refusal is not null then w.workflow_refusal
        when p_quotas ? w.tenant_id and row_number() over (
          partition by w.tenant_id, w.workflow_refusal is null order by w.event_id, w.workflow_id
        ) > (p_quotas -> w.tenant_id ->> 'left')::bigint then 'executions_per_month'
      end as refusal
    from judged_by_workflow as w
  ),

  refused as (
    insert into conveyor.execution_logs (tenant_id, workflow_id, event_id, level, message, details)
    select j.tenant_id, j.workflow_id, j.event_id,
      case when j.refusal in ('run_once', 'rate_limit', 'concurrency_limit') then 'info' else 'warning' end,
      case j.refusal
        when 'condition_error' then format(
          'event %s started no execution: the trigger condition of workflow %s failed: %s',
          j.event_id, j.workflow_id, j.condition_error)
        when 'run_once' then format(
          'event %s started no execution: workflow %s runs once per entity and already ran for %s',
          j.event_id, j.workflow_id, j.once_key)
        when 'rate_limit' then format(
          'event %s started no execution: workflow %s reached its limit of %s executions per hour',
          j.event_id, j.workflow_id, j.max_executions_per_hour)
        when 'tenant_event_rate' then format(
          'event %s started no execution: tenant %s reached its limit of %s events per minute'
          || ' (setting conveyor.max_tenant_events_per_minute)',
          j.event_id, j.tenant_id, v_rate_limit)
        when 'tenant_active_limit' then format(
          'event %s started no execution: tenant %s reached its limit of %s active executions'
          || ' (setting conveyor.max_tenant_active_executions)',
          j.event_id, j.tenant_id, v_active_limit)
        when 'chain_budget' then format(
          'event %s started no execution: its event chain (root event %s) reached its limit of %s'
          || ' executions (setting conveyor.max_chain_executions)',
          j.event_id, j.chain_root, v_chain_limit)
        when 'executions_per_month' then format(
          'event %s started no execution of workflow %s: %s', j.event_id, j.workflow_id,
          conveyor.executions_quota_message(j.tenant_id, p_quotas -> j.tenant_id))
        else format(
          'event %s started no execution: workflow %s reached its limit of %s concurrent executions',
          j.event_id, j.workflow_id, j.max_concurrent)
      end,
      jsonb_build_object('reason', j.refusal) || coalesce(jsonb_build_object('error', j.condition_error), '{}')
        || case j.refusal
          when 'tenant_event_rate' then jsonb_build_object('limit', v_rate_limit)
          when 'tenant_active_limit' then jsonb_build_object('limit', v_active_limit)
          when 'chain_budget' then jsonb_build_object('limit', v_chain_limit, 'root_event_id', j.chain_root)
          when 'executions_per_month' then (p_quotas -> j.tenant_id) - 'left' || jsonb_build_object('used',
            greatest((p_quotas -> j.tenant_id ->> 'used')::bigint, (p_quotas -> j.tenant_id ->> 'limit')::bigint))
          else '{}'
        end
    from judged as j
    where j.refusal is not null
    returning 1
  ),

  -- The new executions, not yet written: the interpreter runs their first steps in
  -- memory and inserts each once, in the state it reached (see interpret_executions).
  -- Positional, in the column order of conveyor.executions (a column added there makes
  -- this cast fail loudly): execution_id, tenant_id, workflow_id, version, event_id,
  -- entity_type, entity_id, once_key, status, current_step, wait_kind, resume_at, trigger,
  -- vars, step_outputs, depth, steps_run, error, created_at, started_at, finished_at,
  -- timeout_at, retry_of, paused_at, parent_execution_id, fanout_id, child_index, item,
  -- flow_key.
  created as (
    select row(
      pg_catalog.nextval('conveyor.executions_execution_id_seq'), j.tenant_id, j.workflow_id, j.version,
      j.event_id, j.entity_type, j.entity_id, j.once_key, 'pending', j.entry_step, null, null,
      j.trigger_object, '{}', '{}', j.depth, 0, null, now(), null, null, now() + j.timeout, null, null,
      null, null, null, null, null
    )::conveyor.executions as x, j.flow
    from judged as j
    where j.refusal is null
    order by j.event_id, j.workflow_id
  )

  -- Both branches are consumed here, so the data-modifying one cannot be skipped.
  select
    n.execs,
    n.flow,
    (select count(*) from refused),
    (
      select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('root', g.chain_root, 'tenant', g.tenant_id, 'n', g.n))
      from (
        select j.chain_root, j.tenant_id, count(*) as n
        from judged as j
        where p_weigh_budgets and j.refusal is null and j.chain_root is not null
        group by j.chain_root, j.tenant_id
      ) as g
    )
  -- (created read once: a second reference would materialise it)
  from (select array_agg(c.x order by (c.x).execution_id) as execs, bool_or(c.flow) as flow from created as c) as n
  into v_new, v_flow, v_refused, v_chain_new;

  if v_chain_new is not null then
    insert into conveyor.event_chains as c (root_event_id, tenant_id, executions)
    select (g ->> 'root')::bigint, g ->> 'tenant', (g ->> 'n')::integer
    from pg_catalog.jsonb_array_elements(v_chain_new) as g
    order by 1
    on conflict (root_event_id) do update
      set executions = c.executions + excluded.executions, updated_at = now();
  end if;


  -- Workflows with concurrency per key, debounce or throttle: some of their executions wait,
  -- fold into another or are refused (sql/flow_control.sql); the rest run now.
  if v_flow then
    v_new := nullif(conveyor.flow_control(v_new), '{}');
  end if;
  if v_new is not null then
    -- A second execution of a run-once workflow for one entity cannot slip in between the
    -- check above and this insert: such workflows are serialised by the advisory lock, and
    -- the unique index executions_once_per_entity would fail the whole dispatch (to be
    -- retried) rather than run an entity twice.
    perform conveyor.interpret_executions(v_new, now(), true);
    perform conveyor.record_started(v_new);
  end if;
  -- Executions waiting for a correlated event take their event branch (sql/waits.sql);
  -- after the batch's new executions, whose waits looked back at this batch already.
  perform conveyor.resume_waiting_for_events(v_events);
end;
$$;

-- Sharded start counters (see conveyor.workflow_stats), from execution rows (dispatch
-- passes the rows it holds in memory; the others pass ids). plpgsql rather than sql: a
-- SQL function's statement is planned on every call.
create or replace function conveyor.record_started(p_execs conveyor.executions[])
returns void
language plpgsql
set search_path = ''
as $$
begin
  insert into conveyor.workflow_stats as s (workflow_id, shard, tenant_id, started, last_run_at)
  select x.workflow_id, conveyor.stats_shard(), x.tenant_id, count(*), max(x.created_at)
  from unnest(p_execs) as x
  group by x.workflow_id, x.tenant_id
  order by 1
  on conflict (workflow_id, shard) do update
    set started = s.started + excluded.started,
      last_run_at = greatest(s.last_run_at, excluded.last_run_at);
  -- the tenants' executions this month (sql/quotas.sql)
  perform conveyor.record_usage(p_execs, now());
end;
$$;

create or replace function conveyor.record_started(p_execution_ids bigint[])
returns void
language plpgsql
set search_path = ''
as $$
begin
  perform conveyor.record_started(array(
    select x from conveyor.executions as x where x.execution_id = any(p_execution_ids)
  ));
end;
$$;
