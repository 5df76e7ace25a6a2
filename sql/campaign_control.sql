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

-- Pause / resume / cancel a whole campaign: its flag, and every enrollment still running.
create or replace function conveyor.control_campaign(p_tenant_id text, p_slug text, p_action text)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_campaign conveyor.campaigns;
  v_count integer := 0;
  v_id bigint;
begin
  perform conveyor.require_tenant(p_tenant_id);
  v_campaign := conveyor.campaign_by_slug(p_tenant_id, p_slug);
  if p_action not in ('pause', 'resume', 'cancel') then
    raise exception using errcode = '22023', message = format('unknown action "%s" (pause, resume or cancel)', p_action);
  end if;
  update conveyor.campaigns set paused = (p_action = 'pause'), updated_at = now()
  where campaign_id = v_campaign.campaign_id;
  for v_id in select ce.enrollment_id from conveyor.campaign_enrollments as ce
    where ce.campaign_id = v_campaign.campaign_id
      and ce.status = any(case p_action when 'resume' then array['paused'] when 'pause' then array['active']
        else array['active', 'paused'] end)
    order by ce.enrollment_id
  loop
    perform conveyor.control_enrollment(p_tenant_id, v_id, p_action);
    v_count := v_count + 1;
  end loop;
  return v_count;
end;
$$;

revoke all on function conveyor.control_enrollment(text, bigint, text) from public;
revoke all on function conveyor.control_campaign(text, text, text) from public;
