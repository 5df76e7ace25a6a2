-- Whether an event would start a workflow, and if not why: the checks dispatch makes
-- (sql/dispatch.sql), in its order, for one subscription and one trigger object. Read by
-- `conveyor dry-run` (sql/dry_run.sql: "would not start: <reason>") and `conveyor events
-- show` (conveyor.event_subscribers). Not on the hot path: dispatch keeps its own set-based
-- copy of these checks, which tests/runner/test_cli_verdicts.py, event by event, holds this one to.
--
-- p_load: also the checks that depend on what ran before (run once per entity, executions
-- per hour, concurrent executions) and, with p_quota, the plan's executions per month;
-- without it only what the event itself decides (type, source, depth, filter, condition).
create or replace function conveyor.trigger_verdict(
  p_subscription conveyor.subscriptions,
  p_trigger jsonb,
  p_load boolean default true,
  p_quota boolean default false,
  out reason text,
  out message text
)
language plpgsql
set search_path = ''
as $$
declare
  v_version conveyor.workflow_versions;
  v_type text := p_trigger ->> 'event_type';
  v_depth integer := coalesce((p_trigger ->> 'depth')::integer, 0);
  v_condition record;
  v_once_key text;
  v_count bigint;
begin
  select * into v_version from conveyor.workflow_versions as v
  where v.workflow_id = p_subscription.workflow_id and v.version = p_subscription.version;
  if v_type is not null and not p_subscription.match_key = any(conveyor.event_match_keys(v_type)) then
    reason := 'event_type';
    message := format('event type %s does not match the trigger %s', v_type, p_subscription.match_key);
  elsif p_subscription.source is not null and p_subscription.source is distinct from p_trigger ->> 'source' then
    reason := 'source';
    message := format('the trigger takes events from source %s only (this one: %s)',
      p_subscription.source, coalesce(p_trigger ->> 'source', 'none'));
  elsif v_depth > conveyor.max_event_depth() then
    reason := 'depth_limit';
    message := format('its chain depth %s exceeds the limit %s', v_depth, conveyor.max_event_depth());
  elsif p_subscription.filter_path is not null and not jsonb_path_match(p_trigger, p_subscription.filter_path) then
    reason := 'filter';
    message := format('the trigger''s filter is false for it: %s', p_subscription.filter);
  end if;
  if reason is not null then
    return;
  end if;
  if p_subscription.condition is not null then
    select * into v_condition from conveyor.try_eval_condition(
      p_subscription.condition, jsonb_build_object('trigger', p_trigger, 'now', now())
    );
    if v_condition.error is not null then
      reason := 'condition_error';
      message := format('the trigger condition failed: %s', v_condition.error);
      return;
    elsif v_condition.holds is false then
      reason := 'condition';
      message := format('the trigger condition is false for it: %s', p_subscription.condition);
      return;
    end if;
  end if;
  if not p_load then
    return;
  end if;
  if v_version.run_once_per_entity and p_trigger ->> 'entity_id' is not null then
    v_once_key := coalesce(p_trigger ->> 'entity_type', '') || ':' || (p_trigger ->> 'entity_id');
    if exists (
      select from conveyor.executions as x
      where x.workflow_id = p_subscription.workflow_id and x.once_key = v_once_key
    ) then
      reason := 'run_once';
      message := format('the workflow runs once per entity and already ran for %s', v_once_key);
      return;
    end if;
  end if;
  if v_version.max_executions_per_hour is not null then
    select count(*) into v_count from conveyor.executions as x
    where x.workflow_id = p_subscription.workflow_id and x.created_at > now() - interval '1 hour';
    if v_count >= v_version.max_executions_per_hour then
      reason := 'rate_limit';
      message := format('rate limit of %s per hour reached (%s started in the last hour)',
        v_version.max_executions_per_hour, v_count);
      return;
    end if;
  end if;
  if v_version.max_concurrent is not null then
    select count(*) into v_count from conveyor.executions as x
    where x.workflow_id = p_subscription.workflow_id and x.status in ('pending', 'running', 'waiting');
    if v_count >= v_version.max_concurrent then
      reason := 'concurrency_limit';
      message := format('concurrency limit of %s reached (%s running now)', v_version.max_concurrent, v_count);
      return;
    end if;
  end if;
  if p_quota then
    message := conveyor.execution_quota_refusal(p_subscription.tenant_id);
    if message is not null then
      reason := 'executions_per_month';
    end if;
  end if;
end;
$$;

revoke all on function conveyor.trigger_verdict(conveyor.subscriptions, jsonb, boolean, boolean) from public;

-- What an event did for each workflow that subscribes to its type (or started or refused
-- for it): {workflow, outcome, execution_id?, reason?, message}. The outcome comes from
-- what dispatch wrote (its executions, its log lines); for a workflow with neither, from
-- the event's own checks evaluated now against the current subscription (type, source,
-- depth, filter, condition): "filter false" and the like are not logged at dispatch.
-- Internal: conveyor.explain_event checks the tenant.
create or replace function conveyor.event_subscribers(
  p_tenant_id text, p_event conveyor.events, p_started jsonb, p_reasons jsonb
)
returns jsonb
language plpgsql
stable
set search_path = ''
as $$
declare
  v_trigger jsonb := conveyor.event_trigger_object(p_event);
begin
  return coalesce((
    select jsonb_agg(r.verdict order by r.workflow)
    from (
      select w.slug as workflow,
        case
          when st.list is not null then jsonb_build_object(
            'workflow', w.slug, 'outcome', 'started', 'execution_id', st.list -> 0 -> 'execution_id',
            'message', format('started execution %s (%s)', st.list -> 0 ->> 'execution_id', st.list -> 0 ->> 'status'))
          when lg.entry is not null then jsonb_build_object(
            'workflow', w.slug, 'outcome', 'refused', 'reason', lg.entry ->> 'reason',
            'message', 'refused: ' || (lg.entry ->> 'message'))
          when p_event.dispatched_at is null then jsonb_build_object(
            'workflow', w.slug, 'outcome', 'pending', 'message', 'not dispatched yet')
          when v.reason is not null then jsonb_build_object(
            'workflow', w.slug, 'outcome', 'not matched', 'reason', v.reason, 'message', 'not started: ' || v.message)
          else jsonb_build_object(
            'workflow', w.slug, 'outcome', 'unknown',
            'message', 'nothing recorded: it matches now (published or changed after the event was dispatched?)')
        end as verdict
      from conveyor.workflows as w
      left join conveyor.subscriptions as s on s.workflow_id = w.workflow_id and s.active
      left join lateral (
        select jsonb_agg(x) as list from jsonb_array_elements(p_started) as x
        where x ->> 'workflow' = w.slug
      ) as st on true
      left join lateral (
        select x as entry from jsonb_array_elements(p_reasons) as x
        where x ->> 'workflow' = w.slug limit 1
      ) as lg on true
      left join lateral conveyor.trigger_verdict(s, v_trigger, false) as v on s.subscription_id is not null
      where w.tenant_id = p_tenant_id
        and (
          st.list is not null or lg.entry is not null
          or s.match_key = any(conveyor.event_match_keys(p_event.event_type))
        )
    ) as r
  ), '[]');
end;
$$;

revoke all on function conveyor.event_subscribers(text, conveyor.events, jsonb, jsonb) from public;
