-- The campaign step, which generated campaign workflows use (sql/campaigns.sql):
--   {"campaign": {"op": "slot", "key", "per_minute", "window"?}}: wait for the next send slot
--     inside the send window and the tenant's send rate (at most per_minute sends per key
--     and calendar minute, taken in the order executions reach the step);
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
        array['window']) as k (message);
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

-- The send time reserved for one execution: the first minute, from the window's next
-- opening on, whose bucket still has room (minutes outside the window are skipped),
-- spread within the minute by the bucket's count. Bounded: at most 1,440 minutes tried.
create or replace function conveyor.campaign_send_slot(
  p_tenant_id text,
  p_key text,
  p_per_minute integer,
  p_window jsonb,
  p_now timestamptz
) returns timestamptz
language plpgsql
set search_path = ''
as $$
declare
  v_at timestamptz := p_now;
  v_minute timestamptz;
  v_used integer;
begin
  if p_window is not null then
    v_at := conveyor.next_window_start(p_now, p_window);
  end if;
  v_minute := date_trunc('minute', v_at);
  for i in 1..1440 loop
    insert into conveyor.campaign_send_slots as s (tenant_id, key, minute, used)
    values (p_tenant_id, p_key, v_minute, 1)
    on conflict (tenant_id, key, minute) do update set used = s.used + 1 where s.used < p_per_minute
    returning s.used into v_used;
    if v_used is not null then
      return greatest(v_at, v_minute + (v_used - 1) * interval '60 seconds' / p_per_minute);
    end if;
    v_minute := v_minute + interval '1 minute';
    if p_window is not null and conveyor.next_window_start(v_minute, p_window) > v_minute then
      v_minute := date_trunc('minute', conveyor.next_window_start(v_minute, p_window));
    end if;
    v_at := v_minute;
  end loop;
  raise exception using errcode = '54000',
    message = format('no send slot free in the next 1440 minutes of the window (key "%s", %s a minute)', p_key,
      p_per_minute);
end;
$$;

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
if v_input ->> 'op' = 'slot' then
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
