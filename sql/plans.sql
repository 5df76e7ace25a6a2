-- Plans (docs/plans.md): the catalogue of what a tenant's plan allows, a tenant's plan,
-- and its usage against it. Where each quota is enforced: sql/quotas.sql.
--
-- A plan is a row of conveyor.plans; null in a limit is unlimited. The installation ships
-- free, pro and enterprise (the EM-57 tiers) and 'standard', which limits nothing and is
-- every tenant's plan until the platform assigns another. A platform edits plans and adds
-- its own with conveyor.set_plan, and moves a tenant with conveyor.set_tenant_plan.

-- The quotas a plan names, in the order messages and conveyor.plan_usage list them, with
-- the kind of value each takes: count (a whole number >= 0), days (> 0), duration, allowed.
create or replace function conveyor.plan_quotas()
returns table (quota text, value_kind text)
language sql
immutable
parallel safe
set search_path = ''
as $$
  select q.quota, q.value_kind
  from (
    values
      (1, 'workflows', 'count'),
      (2, 'executions_per_month', 'count'),
      (3, 'steps_per_workflow', 'count'),
      (4, 'longest_delay', 'duration'),
      (5, 'connections', 'count'),
      (6, 'history_days', 'days'),
      (7, 'webhook_endpoints', 'count'),
      (8, 'scheduled_workflows', 'count'),
      (9, 'conditional_branches', 'allowed'),
      (10, 'parallel_execution', 'allowed')
  ) as q (ord, quota, value_kind)
  order by q.ord;
$$;

-- The first day of the usage month that p_now falls in, in the time zone p_timezone: a
-- tenant's month begins at its own midnight (Pacific/Auckland's February starts on
-- January 31 at 11:00 UTC, America/Los_Angeles's on February 1 at 08:00 UTC).
create or replace function conveyor.usage_period_start(p_timezone text, p_now timestamptz)
returns date
language sql
stable
parallel safe
set search_path = ''
as $$
  select pg_catalog.date_trunc('month', p_now at time zone p_timezone)::date;
$$;

-- The instant a tenant's usage month ends (the next month's first midnight there).
create or replace function conveyor.usage_period_end(p_timezone text, p_period_start date)
returns timestamptz
language sql
stable
parallel safe
set search_path = ''
as $$
  select ((p_period_start + interval '1 month')::timestamp) at time zone p_timezone;
$$;

-- Executions a tenant started in the usage month of p_now (every shard of the counter).
create or replace function conveyor.executions_this_month(p_tenant_id text, p_now timestamptz)
returns bigint
language sql
stable
set search_path = ''
as $$
  select coalesce(sum(u.executions), 0)::bigint
  from conveyor.tenants as t
  join conveyor.tenant_usage as u
    on u.tenant_id = t.tenant_id and u.period_start = conveyor.usage_period_start(t.timezone, p_now)
  where t.tenant_id = p_tenant_id;
$$;

-- Each tenant's days of history kept: its retention_days, at most its plan's history_days.
create or replace function conveyor.tenant_history_days()
returns table (tenant_id text, history_days integer)
language sql
stable
set search_path = ''
as $$
  select t.tenant_id, least(t.retention_days, p.history_days)
  from conveyor.tenants as t
  join conveyor.plans as p on p.name = t.plan;
$$;

-- A limit from a set_plan argument, checked against the quota's kind; raises naming the
-- plan and the key.
create or replace function conveyor.plan_limit_value(p_plan text, p_quota text, p_kind text, p_value jsonb)
returns text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_text text := p_value #>> '{}';
  v_least integer := (p_kind = 'days')::integer;
begin
  if p_kind = 'allowed' then
    if jsonb_typeof(p_value) is distinct from 'boolean' then
      raise exception using errcode = '22023',
        message = format('plan "%s": %s: expected true or false (got %s)', p_plan, p_quota, p_value::text);
    end if;
    return v_text;
  end if;
  if jsonb_typeof(p_value) = 'null' then
    return null;  -- unlimited
  end if;
  if p_kind = 'duration' then
    if conveyor.document_duration_error(p_value, p_quota) is not null then
      raise exception using errcode = '22023',
        message = format('plan "%s": %s: expected a duration such as "1h" or "7d", or null for unlimited (got %s)',
          p_plan, p_quota, p_value::text);
    end if;
    return conveyor.parse_duration(v_text)::text;
  end if;
  if jsonb_typeof(p_value) is distinct from 'number' or p_value::numeric <> trunc(p_value::numeric)
    or p_value::numeric < v_least
    or p_value::numeric > 2147483647 then
    raise exception using errcode = '22023',
      message = format('plan "%s": %s: expected a whole number %s, or null for unlimited (got %s)',
        p_plan, p_quota, case when p_kind = 'days' then 'of days > 0' else '>= 0' end, p_value::text);
  end if;
  return v_text;
end;
$$;

-- Creates or edits a plan (the platform's billing code, not a tenant's request): p_limits holds the quotas to set ({"workflows": 10,
-- "longest_delay": "3d", "parallel_execution": false, "connections": null}); null is
-- unlimited. A new plan leaves the quotas not named unlimited (and both kinds of step
-- allowed); an edit keeps them. Takes effect at once for every tenant on the plan (what
-- exists already stays: a quota refuses the next publish, connection or execution).
create or replace function conveyor.set_plan(p_name text, p_limits jsonb default '{}')
returns conveyor.plans
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_plan conveyor.plans;
  v_unknown text;
begin
  -- A plan is the installation's, shared by every tenant on it: no tenant's transaction
  -- changes it (a request acting for one tenant cannot widen or narrow another's limits).
  if conveyor.current_tenant() is not null then
    raise exception using errcode = '42501',
      message = format('plan "%s": conveyor.set_plan changes a plan for every tenant on it and is refused '
        'in a transaction acting for tenant "%s"', p_name, conveyor.current_tenant()),
      hint = 'Call it from the platform''s own code, in a transaction without conveyor.set_tenant.';
  end if;
  if p_name is null or p_name !~ '^[a-z0-9][a-z0-9_.-]*$' then
    raise exception using errcode = '22023',
      message = format('invalid plan name %L', p_name),
      hint = 'A plan name starts with a lowercase letter or digit and holds a-z 0-9 _ . - only.';
  end if;
  if p_limits is null or jsonb_typeof(p_limits) <> 'object' then
    raise exception using errcode = '22023',
      message = format('plan "%s": the limits must be a JSON object of quotas', p_name);
  end if;
  select k into v_unknown
  from jsonb_object_keys(p_limits) as k
  where k not in (select q.quota from conveyor.plan_quotas() as q)
  order by k
  limit 1;
  if v_unknown is not null then
    raise exception using errcode = '22023',
      message = format('plan "%s": unknown quota "%s" (expected one of: %s)', p_name, v_unknown,
        (select string_agg(q.quota, ', ') from conveyor.plan_quotas() as q));
  end if;

  -- Lock the plan (or create it), then apply the quotas named, each checked.
  insert into conveyor.plans as p (name) values (p_name)
  on conflict (name) do update set updated_at = now()
  returning p.* into v_plan;
  v_plan := pg_catalog.jsonb_populate_record(v_plan, (
    select pg_catalog.jsonb_object_agg(
      q.quota, conveyor.plan_limit_value(p_name, q.quota, q.value_kind, p_limits -> q.quota))
    from conveyor.plan_quotas() as q
    where p_limits ? q.quota
  ));
  update conveyor.plans as p
  set
    workflows = v_plan.workflows,
    executions_per_month = v_plan.executions_per_month,
    steps_per_workflow = v_plan.steps_per_workflow,
    longest_delay = v_plan.longest_delay,
    connections = v_plan.connections,
    history_days = v_plan.history_days,
    webhook_endpoints = v_plan.webhook_endpoints,
    scheduled_workflows = v_plan.scheduled_workflows,
    conditional_branches = v_plan.conditional_branches,
    parallel_execution = v_plan.parallel_execution
  where p.name = p_name
  returning p.* into v_plan;
  return v_plan;
end;
$$;

-- Moves a tenant to a plan; returns the plan it had. Quotas apply from the next publish,
-- connection or execution: nothing the tenant has is removed (history beyond the new
-- history_days goes with the next prune).
create or replace function conveyor.set_tenant_plan(p_tenant_id text, p_plan text)
returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_previous text;
begin
  perform conveyor.require_tenant(p_tenant_id);
  if not exists (select from conveyor.plans as p where p.name = p_plan) then
    raise exception using errcode = '22023',
      message = format('tenant "%s": unknown plan "%s" (plans: %s)', p_tenant_id, p_plan,
        (select string_agg(p.name, ', ' order by p.name) from conveyor.plans as p)),
      hint = 'Add a plan with conveyor.set_plan(name, limits).';
  end if;
  select t.plan into v_previous from conveyor.tenants as t where t.tenant_id = p_tenant_id for update;
  if not found then
    raise exception using errcode = 'P0002', message = format('tenant "%s" does not exist', p_tenant_id);
  end if;
  update conveyor.tenants as t set plan = p_plan where t.tenant_id = p_tenant_id;
  return v_previous;
end;
$$;

-- A tenant's usage against its plan at p_now: {"tenant", "plan", "timezone",
-- "period_start", "period_end", "quotas": [{"quota", "used", "limit"}, ...]} in the order
-- of conveyor.plan_quotas; a null limit is unlimited. For counts, "used" is what the quota
-- counts; for steps_per_workflow and longest_delay, the largest among the tenant's current
-- versions; for the two kinds of step, the active workflows that have such steps; for
-- history_days, the days kept (the plan's limit or the tenant's retention_days, the less).
create or replace function conveyor.plan_usage(p_tenant_id text, p_now timestamptz default now())
returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_tenant conveyor.tenants;
  v_plan conveyor.plans;
  v_period date;
  v_current conveyor.workflow_steps[];
begin
  perform conveyor.require_tenant(p_tenant_id);
  select * into v_tenant from conveyor.tenants as t where t.tenant_id = p_tenant_id;
  if not found then
    raise exception using errcode = 'P0002', message = format('tenant "%s" does not exist', p_tenant_id);
  end if;
  select * into v_plan from conveyor.plans as p where p.name = v_tenant.plan;
  v_period := conveyor.usage_period_start(v_tenant.timezone, p_now);
  -- the steps of the current versions of the tenant's active workflows
  v_current := array(
    select s from conveyor.workflows as w
    join conveyor.workflow_steps as s on s.workflow_id = w.workflow_id and s.version = w.current_version
    where w.tenant_id = p_tenant_id and w.active
  );

  return jsonb_build_object(
    'tenant', p_tenant_id,
    'plan', v_plan.name,
    'timezone', v_tenant.timezone,
    'period_start', v_period,
    'period_end', conveyor.usage_period_end(v_tenant.timezone, v_period),
    'quotas', jsonb_build_array(
      jsonb_build_object('quota', 'workflows', 'limit', v_plan.workflows, 'used', (
        select count(*) from conveyor.workflows as w where w.tenant_id = p_tenant_id and w.active)),
      jsonb_build_object('quota', 'executions_per_month', 'limit', v_plan.executions_per_month,
        'used', conveyor.executions_this_month(p_tenant_id, p_now)),
      jsonb_build_object('quota', 'steps_per_workflow', 'limit', v_plan.steps_per_workflow, 'used', (
        select coalesce(max(c.n), 0) from (
          select count(*) as n from unnest(v_current) as s group by s.workflow_id
        ) as c)),
      jsonb_build_object('quota', 'longest_delay',
        'limit', case when v_plan.longest_delay is not null then conveyor.duration_text(v_plan.longest_delay) end,
        'used', conveyor.duration_text(coalesce((
          select max(d.waits) from unnest(v_current) as s
          cross join lateral conveyor.step_longest_wait(s.kind, s.config) as d (waits)
        ), interval '0'))),
      jsonb_build_object('quota', 'connections', 'limit', v_plan.connections, 'used', (
        select count(*) from conveyor.connections as c where c.tenant_id = p_tenant_id)),
      jsonb_build_object('quota', 'history_days', 'limit', v_plan.history_days,
        'used', least(v_tenant.retention_days, v_plan.history_days)),
      jsonb_build_object('quota', 'webhook_endpoints', 'limit', v_plan.webhook_endpoints, 'used', (
        select count(*) from conveyor.webhook_endpoints as e where e.tenant_id = p_tenant_id)),
      jsonb_build_object('quota', 'scheduled_workflows', 'limit', v_plan.scheduled_workflows,
        'used', conveyor.scheduled_workflows(p_tenant_id)),
      jsonb_build_object('quota', 'conditional_branches',
        'limit', case when v_plan.conditional_branches then null else 0 end, 'used', (
          select count(distinct s.workflow_id) from unnest(v_current) as s
          where s.kind = any(conveyor.conditional_step_kinds()))),
      jsonb_build_object('quota', 'parallel_execution',
        'limit', case when v_plan.parallel_execution then null else 0 end, 'used', (
          select count(distinct s.workflow_id) from unnest(v_current) as s
          where s.kind = any(conveyor.parallel_step_kinds())))
    )
  );
end;
$$;
