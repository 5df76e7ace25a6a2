-- The campaign step, which generated campaign workflows use (sql/campaigns.sql):
--   {"campaign": {"op": "slot", "key", "per_minute", "window"?, "unless_on_time"?}}: wait for
--     the next send slot inside the send window and the tenant's send rate (at most
--     per_minute sends per key and calendar minute, taken in the order executions reach
--     the step); with unless_on_time (the first slot's send_at) only when now is more than a
--     minute past it, so sends the tick resumed late keep the rate;
--   {"campaign": {"op": "contact", "entity"}}: the enrolled row as it is now, into vars.contact
--     (sql/campaign_contacts.sql);
--   {"campaign": {"op": "content", "template", "channel", "data"?}}: a notification template's
--     email or sms part, rendered (sql/campaign_content.sql);
--   {"campaign": {"op": "finish", "status": "completed" | "stopped", "reason"?}}: record the
--     enrollment's end and count it.

create or replace function conveyor.step_campaign_errors(p_step jsonb, p_path text, p_step_ids jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_spec jsonb := p_step -> 'campaign';
  v_path text := p_path || '.campaign';
begin
  if jsonb_typeof(v_spec) is distinct from 'object' then
    return next format('%s: expected an object with "op" (slot, contact, content or finish)', v_path);
    return;
  end if;
  case v_spec ->> 'op'
    when 'slot' then
      return query
      select k.message from conveyor.document_key_errors(v_spec, v_path, array['op', 'key', 'per_minute'],
        array['window', 'unless_on_time']) as k (message);
      if jsonb_typeof(v_spec -> 'per_minute') is distinct from 'number'
        or (v_spec ->> 'per_minute')::numeric not between 1 and 1000000
        or (v_spec ->> 'per_minute')::numeric <> trunc((v_spec ->> 'per_minute')::numeric) then
        return next format('%s.per_minute: expected a whole number from 1 to 1000000', v_path);
      end if;
      if v_spec ? 'window' then
        return query select w.message from conveyor.window_errors(v_spec -> 'window', v_path || '.window') as w (message);
        if strpos(v_spec -> 'window' ->> 'timezone', '{{') > 0 then
          return query select t.message from conveyor.document_template_errors(
            v_spec -> 'window' -> 'timezone', v_path || '.window.timezone', p_step_ids) as t (message);
        end if;
      end if;
    when 'contact' then
      return query
      select k.message from conveyor.document_key_errors(v_spec, v_path, array['op', 'entity'], '{}') as k (message);
    when 'content' then
      return query
      select k.message from conveyor.document_key_errors(v_spec, v_path, array['op', 'template', 'channel'],
        array['data']) as k (message);
      if v_spec ->> 'channel' not in ('email', 'sms') then
        return next format('%s.channel: expected "email" or "sms"', v_path);
      end if;
      return query select t.message from conveyor.document_template_errors(v_spec -> 'data', v_path || '.data',
        p_step_ids) as t (message) where v_spec ? 'data';
    when 'finish' then
      return query
      select k.message from conveyor.document_key_errors(v_spec, v_path, array['op', 'status'], array['reason'])
        as k (message);
      if v_spec ->> 'status' not in ('completed', 'stopped') then
        return next format('%s.status: expected "completed" or "stopped"', v_path);
      end if;
    else
      return next format('%s.op: expected "slot", "contact", "content" or "finish" (got %s)', v_path, coalesce((v_spec -> 'op')::text, 'nothing'));
  end case;
end;
$$;

-- (the reservation, conveyor.campaign_send_slot, is sql/campaign_send_slots.sql)

-- An enrollment's end: its status, and the campaign's counter of it.
create or replace function conveyor.campaign_finish(p_execution_id bigint, p_status text, p_reason text)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_row conveyor.campaign_enrollments;
begin
  update conveyor.campaign_enrollments
  set status = p_status, stop_reason = nullif(p_reason, ''), finished_at = now()
  where execution_id = p_execution_id and status in ('active', 'paused')
  returning * into v_row;
  if found then
    insert into conveyor.campaign_stats as s (tenant_id, campaign_id, completed, stopped)
    values (v_row.tenant_id, v_row.campaign_id, (p_status = 'completed')::integer, (p_status = 'stopped')::integer)
    on conflict (campaign_id, step_key, variant) do update
    set completed = s.completed + excluded.completed, stopped = s.stopped + excluded.stopped;
  end if;
  return jsonb_build_object('enrollment_id', v_row.enrollment_id, 'status', p_status, 'reason', nullif(p_reason, ''));
end;
$$;

create or replace function conveyor.step_campaign_code()
returns jsonb
language sql
immutable
parallel safe
set search_path = ''
as $$
  select pg_catalog.jsonb_build_object(
    'run', $code$
if v_input ->> 'op' = 'slot' and (v_dry or p_now <= coalesce(
  (nullif(v_input ->> 'unless_on_time', ''))::timestamptz + interval '1 minute', '-infinity')) then
  -- the slot's wait was resumed on time (within its minute): the send goes on
  v_output := jsonb_build_object('on_time', true);
elsif v_input ->> 'op' = 'slot' then
  -- (a second slot step with unless_on_time: the tick resumed the first more than a minute
  -- late, so this send takes a new slot rather than go out with the others late with it)
  if v_dry then
    v_resume := p_now;
  elsif conveyor.campaign_hold(v_exec) then
    -- the campaign is paused: no slot; resuming it takes one then (sql/campaign_control.sql)
    v_resume := 'infinity';
  else
    v_resume := conveyor.campaign_send_slot(v_exec.tenant_id, v_input ->> 'key', (v_input ->> 'per_minute')::integer,
      v_input -> 'window', p_now);
  end if;
  v_output := case when v_resume = 'infinity' then jsonb_build_object('held', true)
    else jsonb_build_object('send_at', v_resume, 'waited', v_resume > p_now) end;
  if v_resume = 'infinity' then
    v_wait := 'delay';
    v_resume := null;
  elsif v_resume > p_now then
    v_wait := 'delay';
  else
    v_resume := null;
  end if;
elsif v_input ->> 'op' = 'contact' then
  -- the enrolled row as it is now, as vars.contact (sql/campaign_contacts.sql)
  v_output := jsonb_build_object('contact', conveyor.campaign_contact(v_exec.tenant_id, v_input ->> 'entity',
    v_exec.entity_id));
  v_new_vars := v_output;
elsif v_input ->> 'op' = 'content' then
  -- a template's content, rendered now (sql/campaign_content.sql)
  v_output := conveyor.campaign_content(v_exec.tenant_id, v_input, v_where);
elsif not v_dry then
  v_output := conveyor.campaign_finish(v_exec.execution_id, v_input ->> 'status', v_input ->> 'reason');
else
  v_output := jsonb_build_object('status', v_input ->> 'status');
end if;
$code$,
    'decision', $code$case when p_input ->> 'op' = 'slot' then 'send at ' || coalesce(p_output ->> 'send_at', '?')
  when p_input ->> 'op' = 'content' then 'content of template ' || coalesce(p_input ->> 'template', '?')
  when p_input ->> 'op' = 'contact' then case when p_output -> 'contact' = 'null' then 'contact deleted'
    else 'contact read' end else 'enrollment ' || coalesce(p_input ->> 'status', '?') end$code$
  );
$$;
