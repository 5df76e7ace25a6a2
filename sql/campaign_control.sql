-- Campaign control (docs/campaigns.md#enrolling): pausing, resuming and cancelling one
-- enrollment (its execution with it) or a whole campaign.

-- Pause / resume / cancel one enrollment (its execution with it).
create or replace function conveyor.control_enrollment(p_tenant_id text, p_enrollment_id bigint, p_action text)
returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_row conveyor.campaign_enrollments;
begin
  perform conveyor.require_tenant(p_tenant_id);
  select * into v_row from conveyor.campaign_enrollments as ce
  where ce.tenant_id = p_tenant_id and ce.enrollment_id = p_enrollment_id for update;
  if not found then
    raise exception using errcode = 'P0002', message = format('enrollment %s does not exist', p_enrollment_id);
  end if;
  if v_row.status not in ('active', 'paused') then
    return v_row.status;
  end if;
  case p_action
    when 'pause' then
      perform conveyor.pause_execution(p_tenant_id, v_row.execution_id);
      update conveyor.campaign_enrollments set status = 'paused' where enrollment_id = p_enrollment_id;
      return 'paused';
    when 'resume' then
      update conveyor.campaign_enrollments set status = 'active' where enrollment_id = p_enrollment_id;
      perform conveyor.resume_execution(p_tenant_id, v_row.execution_id);
      perform conveyor.campaign_release_slots(array[v_row.execution_id]);
      return 'active';
    when 'cancel' then
      perform conveyor.cancel_execution(p_tenant_id, v_row.execution_id, 'enrollment cancelled');
      update conveyor.campaign_enrollments set status = 'cancelled', finished_at = now()
      where enrollment_id = p_enrollment_id;
      return 'cancelled';
    else
      raise exception using errcode = '22023', message = format('unknown action "%s" (pause, resume or cancel)', p_action);
  end case;
end;
$$;

-- Pause / resume / cancel a whole campaign: its flag at once, and its running enrollments
-- in batches of p_batch (at most 10,000), each call one transaction; the caller calls again
-- until remaining is 0 (the CLI does). While a pause is being walked, an enrollment not
-- reached yet that comes to a send holds there (conveyor.campaign_hold), so nothing is sent
-- after the flag is set. Pausing and resuming are set-based (campaign executions have no
-- fan-outs, which conveyor.pause_execution would also walk); cancelling finishes each.
drop function if exists conveyor.control_campaign(text, text, text);
create or replace function conveyor.control_campaign(
  p_tenant_id text, p_slug text, p_action text, p_batch integer default 1000
)
returns table (changed integer, remaining bigint)
language plpgsql
security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  v_campaign conveyor.campaigns;
  v_from text[];
  v_ids bigint[];
  v_execs bigint[];
  v_id bigint;
begin
  perform conveyor.require_tenant(p_tenant_id);
  v_campaign := conveyor.campaign_by_slug(p_tenant_id, p_slug);
  if p_action not in ('pause', 'resume', 'cancel') then
    raise exception using errcode = '22023', message = format('unknown action "%s" (pause, resume or cancel)', p_action);
  end if;
  v_from := case p_action when 'resume' then array['paused'] when 'pause' then array['active']
    else array['active', 'paused'] end;
  update conveyor.campaigns set paused = (p_action = 'pause'), updated_at = now()
  where campaign_id = v_campaign.campaign_id and paused is distinct from (p_action = 'pause');
  select coalesce(array_agg(l.enrollment_id order by l.enrollment_id), '{}'),
    coalesce(array_agg(l.execution_id order by l.enrollment_id) filter (where l.execution_id is not null), '{}')
  into v_ids, v_execs
  from (
    select ce.enrollment_id, ce.execution_id from conveyor.campaign_enrollments as ce
    where ce.campaign_id = v_campaign.campaign_id and ce.status = any(v_from)
    order by ce.enrollment_id
    limit least(greatest(coalesce(p_batch, 1000), 1), 10000)
    for update skip locked
  ) as l;
  case p_action
    when 'pause' then
      with paused as (
        update conveyor.executions as x set paused_at = now()
        where x.execution_id = any(v_execs) and x.status in ('pending', 'running', 'waiting') and x.paused_at is null
        returning x.tenant_id, x.execution_id, x.workflow_id, x.current_step
      )
      insert into conveyor.execution_logs (tenant_id, execution_id, workflow_id, step_id, level, message)
      select p.tenant_id, p.execution_id, p.workflow_id, p.current_step, 'info',
        format('paused at step "%s" (campaign paused)', p.current_step)
      from paused as p order by p.execution_id;
      update conveyor.campaign_enrollments as ce set status = 'paused' where ce.enrollment_id = any(v_ids);
    when 'resume' then
      update conveyor.campaign_enrollments as ce set status = 'active' where ce.enrollment_id = any(v_ids);
      with resumed as (
        update conveyor.executions as x set paused_at = null
        where x.execution_id = any(v_execs) and x.paused_at is not null
        returning x.tenant_id, x.execution_id, x.workflow_id, x.current_step
      )
      insert into conveyor.execution_logs (tenant_id, execution_id, workflow_id, step_id, level, message)
      select r.tenant_id, r.execution_id, r.workflow_id, r.current_step, 'info',
        format('resumed at step "%s" (campaign resumed)', r.current_step)
      from resumed as r order by r.execution_id;
      perform conveyor.run_executions(v_execs);
      perform conveyor.campaign_release_slots(v_execs);
    else
      foreach v_id in array v_ids loop
        perform conveyor.control_enrollment(p_tenant_id, v_id, 'cancel');
      end loop;
  end case;
  changed := cardinality(v_ids);
  select count(*) into remaining from conveyor.campaign_enrollments as ce
  where ce.campaign_id = v_campaign.campaign_id and ce.status = any(v_from);
  return next;
end;
$$;

-- Executions waiting at a campaign send slot whose time is not theirs any more — held
-- while the campaign was paused (no slot), or whose slot passed during a pause — take
-- a new slot now: the slot step runs again, so resumed enrollments queue in the send
-- rate instead of sending at once.
create or replace function conveyor.campaign_release_slots(p_execution_ids bigint[])
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_ids bigint[];
begin
  with due as (
    select x.execution_id, x.current_step
    from conveyor.executions as x
    join conveyor.workflow_steps as s
      on s.workflow_id = x.workflow_id and s.version = x.version and s.step_id = x.current_step
    where x.execution_id = any(p_execution_ids) and x.status = 'waiting' and x.wait_kind = 'delay'
      and x.paused_at is null and s.kind = 'campaign' and (s.step_id like '%-slot' or s.step_id like '%-ontime')
      and (x.resume_at is null or x.resume_at < now())
    order by x.execution_id
    for update of x skip locked
  ),
  runs as (
    update conveyor.step_runs as r
    set status = 'completed', finished_at = now(), next_step = d.current_step,
      output = coalesce(r.output, '{}') || jsonb_build_object('released_at', now())
    from due as d
    where r.execution_id = d.execution_id and r.step_id = d.current_step and r.status = 'running'
    returning r.execution_id
  )
  select coalesce(array_agg(d.execution_id order by d.execution_id), '{}') into v_ids
  from due as d where (select count(*) from runs) >= 0;
  update conveyor.executions as x set status = 'pending', wait_kind = null, resume_at = null
  where x.execution_id = any(v_ids);
  perform conveyor.run_executions(v_ids);
  return cardinality(v_ids);
end;
$$;

-- The guard of a send slot: an enrollment of a paused campaign that comes to a send
-- pauses there (its execution and its enrollment) instead of taking a slot.
create or replace function conveyor.campaign_hold(p_exec conveyor.executions)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
begin
  if not exists (
    select from conveyor.campaigns as c
    where c.campaign_id = (p_exec.trigger -> 'payload' ->> 'campaign_id')::bigint and c.paused
  ) then
    return false;
  end if;
  update conveyor.executions as x set paused_at = now()
  where x.execution_id = p_exec.execution_id and x.paused_at is null;
  update conveyor.campaign_enrollments as ce set status = 'paused'
  where ce.execution_id = p_exec.execution_id and ce.status = 'active';
  insert into conveyor.execution_logs (tenant_id, execution_id, workflow_id, step_id, level, message)
  values (p_exec.tenant_id, p_exec.execution_id, p_exec.workflow_id, p_exec.current_step, 'info',
    format('held at step "%s": the campaign is paused', p_exec.current_step));
  return true;
end;
$$;

revoke all on function conveyor.control_enrollment(text, bigint, text) from public;
revoke all on function conveyor.control_campaign(text, text, text, integer) from public;
revoke all on function conveyor.campaign_release_slots(bigint[]) from public;
revoke all on function conveyor.campaign_hold(conveyor.executions) from public;
