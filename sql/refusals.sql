-- Why a workflow's events started nothing: the reasons dispatch logged for it (quota,
-- rate and concurrency limits, run once, throttle, debounce, budgets, a failing trigger
-- condition), counted by reason, with the last occurrence of each. Events past the chain
-- depth limit are refused before any workflow is matched: those of a type the workflow's
-- trigger takes are counted for it too. `conveyor workflows refusals SLUG`.
create or replace function conveyor.workflow_refusals(
  p_tenant_id text,
  p_slug text,
  p_since interval default interval '7 days'
)
returns table (
  reason text,
  events bigint,
  first_at timestamptz,
  last_at timestamptz,
  last_event_id bigint,
  last_message text
)
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_workflow_id bigint;
begin
  perform conveyor.require_tenant(p_tenant_id);
  select w.workflow_id into v_workflow_id
  from conveyor.workflows as w
  where w.tenant_id = p_tenant_id and w.slug = p_slug;
  if v_workflow_id is null then
    raise exception using errcode = 'P0002',
      message = format('workflow %L does not exist for tenant %L', p_slug, p_tenant_id);
  end if;
  return query
  with lines as (
    select l.details ->> 'reason' as reason, l.logged_at, l.event_id, l.message
    from conveyor.execution_logs as l
    where l.workflow_id = v_workflow_id and l.execution_id is null and l.logged_at >= now() - p_since
      and l.details ? 'reason'
    union all
    select l.details ->> 'reason', l.logged_at, l.event_id, l.message
    from conveyor.execution_logs as l
    join conveyor.events as e on e.event_id = l.event_id
    where l.tenant_id = p_tenant_id and l.workflow_id is null and l.execution_id is null
      and l.logged_at >= now() - p_since and l.details ->> 'reason' = 'depth_limit'
      and exists (
        select from conveyor.subscriptions as s
        where s.workflow_id = v_workflow_id and s.active and s.match_key = any(conveyor.event_match_keys(e.event_type))
      )
  )
  select distinct on (g.reason)
    g.reason, count(*) over (partition by g.reason), min(g.logged_at) over (partition by g.reason),
    g.logged_at, g.event_id, g.message
  from lines as g
  order by g.reason, g.logged_at desc, g.event_id desc;
end;
$$;
