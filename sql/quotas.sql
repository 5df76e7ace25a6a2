-- Quotas (docs/plans.md): where a tenant's plan (sql/plans.sql) refuses what would pass
-- it. Every refusal names the quota, the plan, the usage and the limit, and changes
-- nothing: publish, activation and connection creation raise (54000), so their statement
-- stores nothing; dispatch starts nothing for the event and logs why (reason
-- executions_per_month); retention keeps no more days than the plan's history_days
-- (conveyor.tenant_history_days, used by conveyor.prune_history).
--
-- Counts that a concurrent transaction could also raise (active workflows, scheduled
-- workflows, webhook endpoints, connections, executions this month) are taken under a
-- per-tenant advisory lock, and only for tenants whose plan limits them.

-- The step kinds each plan flag is about. Kinds not installed yet are named too: the
-- plan refuses them whenever a document has them.
create or replace function conveyor.conditional_step_kinds()
returns text[]
language sql
immutable
parallel safe
set search_path = ''
as $$
  select array['condition', 'switch', 'split'];
$$;

create or replace function conveyor.parallel_step_kinds()
returns text[]
language sql
immutable
parallel safe
set search_path = ''
as $$
  select array['parallel', 'for_each', 'call'];
$$;

-- The longest a compiled step may keep an execution waiting, as far as its document says:
-- a delay's "for" or fixed "until" (from now), a wait's "timeout"; null when it names none
-- (a delay until a templated time or only to the next window is not known before it runs).
create or replace function conveyor.step_longest_wait(p_kind text, p_config jsonb)
returns interval
language plpgsql
stable
set search_path = ''
as $$
declare
  v_spec jsonb;
  v_until timestamptz;
begin
  if p_kind = 'delay' then
    v_spec := p_config -> 'delay';
    if jsonb_typeof(v_spec -> 'until') = 'string' and strpos(v_spec ->> 'until', '{{') = 0 then
      v_until := (v_spec ->> 'until')::timestamptz;
      return greatest(v_until - now(), interval '0');
    end if;
    return conveyor.parse_duration(v_spec ->> 'for');
  elsif p_kind in ('wait_for_event', 'wait_until') then
    return conveyor.parse_duration(p_config -> p_kind ->> 'timeout');
  end if;
  return null;
end;
$$;

-- Active workflows of a tenant that have a schedule trigger.
create or replace function conveyor.scheduled_workflows(p_tenant_id text)
returns bigint
language sql
stable
set search_path = ''
as $$
  select count(*)
  from conveyor.workflows as w
  join conveyor.schedules as s on s.workflow_id = w.workflow_id
  where w.tenant_id = p_tenant_id and w.active;
$$;

-- Raises the quota refusal: 54000 with the first problem as the message, all of them in
-- the detail (one per line).
create or replace function conveyor.raise_quota_problems(p_tenant_id text, p_plan text, p_problems text[])
returns void
language plpgsql
stable
set search_path = ''
as $$
begin
  if pg_catalog.cardinality(p_problems) > 0 then
    raise exception using
      errcode = '54000',
      message = p_problems[1],
      detail = pg_catalog.array_to_string(p_problems, e'\n'),
      hint = format('Nothing was changed. Tenant "%s" is on plan "%s": move it to another plan with '
        'conveyor.set_tenant_plan(tenant, plan), or change the plan with conveyor.set_plan(name, limits).',
        p_tenant_id, p_plan);
  end if;
end;
$$;

-- A tenant's plan, locking the tenant's quota counts for this transaction when the plan
-- limits any of p_quotas (the quotas whose counts the caller is about to raise).
create or replace function conveyor.lock_tenant_plan(p_tenant_id text, p_quotas text[])
returns conveyor.plans
language plpgsql
set search_path = ''
as $$
declare
  v_plan conveyor.plans;
begin
  select p.* into v_plan
  from conveyor.tenants as t join conveyor.plans as p on p.name = t.plan
  where t.tenant_id = p_tenant_id;
  if exists (
    select from jsonb_each(to_jsonb(v_plan)) as l
    where l.key = any(p_quotas) and l.value <> 'null'
  ) then
    perform pg_catalog.pg_advisory_xact_lock(1133, pg_catalog.hashtext(p_tenant_id));
  end if;
  return v_plan;
end;
$$;

-- The quota problems of one version of a workflow under a plan: its number of steps, its
-- longest delay or wait, and the kinds of step the plan does not allow.
create or replace function conveyor.version_quota_problems(
  p_plan conveyor.plans,
  p_slug text,
  p_workflow_id bigint,
  p_version integer
)
returns setof text
language sql
stable
set search_path = ''
as $$
  with steps as (
    select s.step_id, s.position, s.kind, conveyor.step_longest_wait(s.kind, s.config) as waits
    from conveyor.workflow_steps as s
    where s.workflow_id = p_workflow_id and s.version = p_version
  )
  select format('quota steps_per_workflow of plan "%s" exceeded: workflow "%s" has %s steps, the limit is %s',
    p_plan.name, p_slug, count(*), p_plan.steps_per_workflow)
  from steps
  having count(*) > p_plan.steps_per_workflow
  union all
  (
    select format(
      'quota longest_delay of plan "%s" exceeded: workflow "%s" steps[%s] ("%s", %s) waits %s, the limit is %s',
      p_plan.name, p_slug, s.position, s.step_id, s.kind, conveyor.duration_text(s.waits),
      conveyor.duration_text(p_plan.longest_delay))
    from steps as s
    where s.waits > p_plan.longest_delay
    order by s.position
  )
  union all
  (
    select format(
      'quota %s of plan "%s" exceeded: workflow "%s" steps[%s] ("%s") is a %s step, the plan allows none',
      case when s.kind = any(conveyor.conditional_step_kinds()) then 'conditional_branches' else 'parallel_execution' end,
      p_plan.name, p_slug, s.position, s.step_id, s.kind)
    from steps as s
    where (not p_plan.conditional_branches and s.kind = any(conveyor.conditional_step_kinds()))
      or (not p_plan.parallel_execution and s.kind = any(conveyor.parallel_step_kinds()))
    order by s.position
  );
$$;

-- Called by publish and by activation after they changed the workflow, with what it
-- counted for before (active; active with a schedule; with a webhook endpoint): raises
-- when the change takes the tenant past a quota of its plan. Counts are only refused when
-- the change adds to them, so a tenant over a quota after moving to a smaller plan can
-- still edit what it has. p_version is the version to check step by step (a new version,
-- or the current one of a workflow being activated); null checks none.
create or replace function conveyor.require_workflow_quotas(
  p_tenant_id text,
  p_workflow_id bigint,
  p_version integer,
  p_was_active boolean,
  p_was_scheduled boolean,
  p_had_endpoint boolean
)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_plan conveyor.plans;
  v_workflow conveyor.workflows;
  v_problems text[] := '{}';
  v_n bigint;
begin
  v_plan := conveyor.lock_tenant_plan(p_tenant_id, array['workflows', 'scheduled_workflows', 'webhook_endpoints']);
  select * into v_workflow from conveyor.workflows as w where w.workflow_id = p_workflow_id;

  if v_workflow.active and not p_was_active and v_plan.workflows is not null then
    select count(*) into v_n from conveyor.workflows as w where w.tenant_id = p_tenant_id and w.active;
    if v_n > v_plan.workflows then
      v_problems := v_problems || format(
        'quota workflows of plan "%s" exceeded: tenant "%s" has %s active workflows, the limit is %s '
        '(workflow "%s" would be one more)', v_plan.name, p_tenant_id, v_n - 1, v_plan.workflows, v_workflow.slug);
    end if;
  end if;

  if v_workflow.active and not p_was_scheduled and v_plan.scheduled_workflows is not null
    and exists (select from conveyor.schedules as s where s.workflow_id = p_workflow_id) then
    v_n := conveyor.scheduled_workflows(p_tenant_id);
    if v_n > v_plan.scheduled_workflows then
      v_problems := v_problems || format(
        'quota scheduled_workflows of plan "%s" exceeded: tenant "%s" has %s active scheduled workflows, '
        'the limit is %s (workflow "%s" would be one more)',
        v_plan.name, p_tenant_id, v_n - 1, v_plan.scheduled_workflows, v_workflow.slug);
    end if;
  end if;

  if not p_had_endpoint and v_plan.webhook_endpoints is not null
    and exists (select from conveyor.webhook_endpoints as e where e.workflow_id = p_workflow_id) then
    select count(*) into v_n from conveyor.webhook_endpoints as e where e.tenant_id = p_tenant_id;
    if v_n > v_plan.webhook_endpoints then
      v_problems := v_problems || format(
        'quota webhook_endpoints of plan "%s" exceeded: tenant "%s" has %s webhook endpoints, the limit is %s '
        '(workflow "%s" would add one)', v_plan.name, p_tenant_id, v_n - 1, v_plan.webhook_endpoints,
        v_workflow.slug);
    end if;
  end if;

  if p_version is not null then
    v_problems := v_problems || array(
      select conveyor.version_quota_problems(v_plan, v_workflow.slug, p_workflow_id, p_version)
    );
  end if;
  perform conveyor.raise_quota_problems(p_tenant_id, v_plan.name, v_problems);
end;
$$;

-- Connection creation (a row trigger on conveyor.connections, whoever inserts): refused
-- past the plan's connections. An insert that replaces a connection of the same name
-- (on conflict do update) adds none and passes.
create or replace function conveyor.require_connection_quota()
returns trigger
language plpgsql
set search_path = ''
as $$
declare
  v_plan conveyor.plans;
  v_n bigint;
begin
  v_plan := conveyor.lock_tenant_plan(new.tenant_id, array['connections']);
  if v_plan.connections is null
    or exists (select from conveyor.connections as c where c.tenant_id = new.tenant_id and c.name = new.name) then
    return new;
  end if;
  select count(*) into v_n from conveyor.connections as c where c.tenant_id = new.tenant_id;
  if v_n >= v_plan.connections then
    perform conveyor.raise_quota_problems(new.tenant_id, v_plan.name, array[format(
      'quota connections of plan "%s" exceeded: tenant "%s" has %s connections, the limit is %s '
      '(connection "%s" would be one more)', v_plan.name, new.tenant_id, v_n, v_plan.connections, new.name)]);
  end if;
  return new;
end;
$$;

create or replace trigger connections_quota
before insert on conveyor.connections
for each row execute function conveyor.require_connection_quota();

-- The executions per month each of p_tenants (a dispatch batch's, or one) may still
-- start at p_now, for those whose plan limits them: {"<tenant>": {"left", "used",
-- "limit", "plan", "period_start", "timezone"}}, or null when none of them is limited (the
-- common case: one query). Each limited tenant's count is locked until the transaction
-- ends, in tenant order, so concurrent starts cannot both take the last execution; the
-- transaction adds what it started (conveyor.record_started) before it commits.
create or replace function conveyor.lock_execution_quotas(p_tenants text[], p_now timestamptz)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_quotas jsonb;
  v_tenant record;
  v_used bigint;
begin
  for v_tenant in
    select t.tenant_id, t.timezone, p.name as plan, p.executions_per_month as quota_limit
    from conveyor.tenants as t
    join conveyor.plans as p on p.name = t.plan
    where t.tenant_id = any(p_tenants) and p.executions_per_month is not null
    order by t.tenant_id
  loop
    perform pg_catalog.pg_advisory_xact_lock(1132, pg_catalog.hashtext(v_tenant.tenant_id));
    v_used := conveyor.executions_this_month(v_tenant.tenant_id, p_now);
    v_quotas := coalesce(v_quotas, '{}') || jsonb_build_object(v_tenant.tenant_id, jsonb_build_object(
      'left', greatest(v_tenant.quota_limit - v_used, 0), 'used', v_used, 'limit', v_tenant.quota_limit,
      'plan', v_tenant.plan, 'timezone', v_tenant.timezone,
      'period_start', conveyor.usage_period_start(v_tenant.timezone, p_now)));
  end loop;
  return v_quotas;
end;
$$;

-- The refusal of an execution past executions_per_month, as a log line's message.
create or replace function conveyor.executions_quota_message(p_tenant_id text, p_quota jsonb)
returns text
language sql
immutable
set search_path = ''
as $$
  select format(
    'quota executions_per_month of plan "%s" exceeded: tenant "%s" has started %s executions this month '
    '(since %s, %s), the limit is %s',
    p_quota ->> 'plan', p_tenant_id, greatest((p_quota ->> 'used')::bigint, (p_quota ->> 'limit')::bigint),
    p_quota ->> 'period_start', p_quota ->> 'timezone', p_quota ->> 'limit');
$$;

-- Why the tenant may start no more executions this month (the quota's message), or null
-- when it may: the check of the starts that are not dispatched events (schedules, date
-- triggers, webhooks), which log it and start nothing. The count stays locked until commit.
create or replace function conveyor.execution_quota_refusal(p_tenant_id text)
returns text
language plpgsql
set search_path = ''
as $$
declare
  v_quota jsonb := conveyor.lock_execution_quotas(array[p_tenant_id], now()) -> p_tenant_id;
begin
  if (v_quota ->> 'left')::bigint < 1 then
    return conveyor.executions_quota_message(p_tenant_id, v_quota);
  end if;
  return null;
end;
$$;

-- A manual run's check (conveyor.trigger_workflow): raises when the tenant's month is spent.
create or replace function conveyor.require_execution_quota(p_tenant_id text)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_refusal text := conveyor.execution_quota_refusal(p_tenant_id);
begin
  if v_refusal is not null then
    perform conveyor.raise_quota_problems(p_tenant_id,
      (select t.plan from conveyor.tenants as t where t.tenant_id = p_tenant_id), array[v_refusal]);
  end if;
end;
$$;

-- Counts started executions in their tenants' usage months at p_now (this backend's
-- shard), in the transaction that started them. Called by conveyor.record_started for
-- every way an execution starts (events, manual runs, schedules, date triggers, webhooks,
-- retries).
create or replace function conveyor.record_usage(p_execs conveyor.executions[], p_now timestamptz)
returns void
language plpgsql
set search_path = ''
as $$
begin
  -- grouped before the join: a batch has thousands of executions and a few tenants
  insert into conveyor.tenant_usage as u (tenant_id, period_start, shard, executions)
  select x.tenant_id, conveyor.usage_period_start(t.timezone, p_now), conveyor.stats_shard(), x.n
  from (
    select e.tenant_id, count(*) as n from unnest(p_execs) as e group by e.tenant_id
  ) as x
  join conveyor.tenants as t on t.tenant_id = x.tenant_id
  order by 1
  on conflict (tenant_id, period_start, shard) do update
    set executions = u.executions + excluded.executions, updated_at = now();
end;
$$;

-- Usage months more than a year back are forgotten (conveyor.prune_history): the quota
-- reads only the current month, and `conveyor usage` shows it.
create or replace function conveyor.prune_usage(p_now timestamptz default now())
returns integer
language plpgsql
set search_path = ''
as $$
declare
  v_gone integer;
begin
  delete from conveyor.tenant_usage as u where u.period_start < (p_now - interval '13 months')::date;
  get diagnostics v_gone = row_count;
  return v_gone;
end;
$$;

revoke all on function conveyor.require_workflow_quotas(text, bigint, integer, boolean, boolean, boolean) from public;
revoke all on function conveyor.lock_execution_quotas(text[], timestamptz) from public;
revoke all on function conveyor.require_execution_quota(text) from public;
revoke all on function conveyor.record_usage(conveyor.executions[], timestamptz) from public;
