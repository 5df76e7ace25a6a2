-- Campaign documents (docs/campaigns.md): their checks, with paths like workflows'
-- ("steps[2].delay: ..."), and their compilation into a workflow document: each sequence
-- step is a send slot (window and rate), the send, then a wait for the enrollment's halt
-- event (a reply, bounce, complaint or unsubscribe) with the next step's delay as its
-- timeout. Templates and conditions may use the roots contact, enrollment and campaign,
-- which are the enrollment's trigger payload.

-- In templates and condition fields: contact.x → vars.contact.x (the row as each step
-- re-read it, sql/campaign_contacts.sql); enrollment.x / campaign.x → trigger.payload.*
create or replace function conveyor.campaign_rewrite(p_value jsonb) returns jsonb
language sql
immutable
parallel safe
set search_path = ''
as $$
  select pg_catalog.regexp_replace(pg_catalog.regexp_replace(
    pg_catalog.regexp_replace(pg_catalog.regexp_replace(p_value::text,
      '\{\{(\s*)contact([.|} ])', '{{\1vars.contact\2', 'g'),
      '"field": "contact([."])', '"field": "vars.contact\1', 'g'),
    '\{\{(\s*)(enrollment|campaign)([.|} ])', '{{\1trigger.payload.\2\3', 'g'),
    '"field": "(enrollment|campaign)([."])', '"field": "trigger.payload.\1\2', 'g'
  )::jsonb;
$$;

create or replace function conveyor.campaign_step_errors(p_doc jsonb, p_step jsonb, p_path text, p_index integer)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_channel text := p_step ->> 'channel';
  v_content text[];
  v_variant record;
  v_field text;
begin
  if jsonb_typeof(p_step) is distinct from 'object' then
    return next format('%s: expected a step object with "id" and "channel"', p_path);
    return;
  end if;
  v_content := case v_channel
    when 'email' then array['subject', 'html', 'text', 'template', 'data']
    when 'sms' then array['body', 'template', 'data']
    when 'task' then array['to', 'title', 'message']
    else '{}' end;
  return query select k.message from conveyor.document_key_errors(p_step, p_path, array['id', 'channel'],
    array['delay', 'skip_if', 'stop_on_reply', 'variants'] || v_content) as k (message);
  if (p_step ->> 'id') !~ '^[a-z0-9][a-z0-9_]*$' then
    return next format('%s.id: invalid step id %s (lowercase letters, digits and _)', p_path,
      coalesce((p_step -> 'id')::text, 'missing'));
  end if;
  if v_channel not in ('email', 'sms', 'task', 'wait') then
    return next format('%s.channel: expected one of email, sms, task, wait (got %s)', p_path,
      coalesce((p_step -> 'channel')::text, 'nothing'));
    return;
  end if;
  if p_step ? 'delay' then
    return query select d.message from (select conveyor.document_duration_error(p_step -> 'delay', p_path || '.delay')
      as message) as d where d.message is not null;
  elsif v_channel = 'wait' then
    return next format('%s.delay: a wait step needs a delay', p_path);
  end if;
  if p_step ? 'stop_on_reply' and jsonb_typeof(p_step -> 'stop_on_reply') <> 'boolean' then
    return next format('%s.stop_on_reply: expected true or false', p_path);
  end if;
  if p_step ? 'skip_if' then
    return query select c.message from conveyor.document_condition_errors(
      conveyor.campaign_rewrite(p_step -> 'skip_if'), p_path || '.skip_if', '[]'::jsonb) as c (message);
  end if;
  foreach v_field in array v_content loop
    if p_step ? v_field then
      return query select t.message from conveyor.document_template_errors(
        conveyor.campaign_rewrite(p_step -> v_field), p_path || '.' || v_field, '[]'::jsonb) as t (message);
    end if;
  end loop;
  -- content: inline, or a notification template's (sql/campaign_content.sql), not both
  return query select c.message from conveyor.campaign_template_shape_errors(p_step, p_path) as c (message);
  if v_channel = 'email' and not p_step ? 'variants' and not p_step ? 'template' then
    if not p_step ? 'subject' then
      return next format('%s.subject: required key is missing', p_path);
    end if;
    if not (p_step ? 'html' or p_step ? 'text') then
      return next format('%s: an email step needs "html" or "text"', p_path);
    end if;
  elsif v_channel = 'sms' and not p_step ?| array['body', 'variants', 'template'] then
    return next format('%s.body: required key is missing', p_path);
  elsif v_channel = 'task' and not (p_step ? 'to' and p_step ? 'title') then
    return next format('%s: a task step needs "to" (a user) and "title"', p_path);
  end if;
  if p_step ? 'variants' then
    if v_channel not in ('email', 'sms') or jsonb_typeof(p_step -> 'variants') <> 'array'
      or jsonb_array_length(p_step -> 'variants') not between 2 and 10 then
      return next format('%s.variants: expected 2 to 10 variants on an email or sms step', p_path);
      return;
    end if;
    for v_variant in select (e.n - 1)::integer as idx, e.v from jsonb_array_elements(p_step -> 'variants')
      with ordinality as e (v, n) loop
      return query select k.message from conveyor.document_key_errors(v_variant.v, format('%s.variants[%s]', p_path,
        v_variant.idx), array['name', 'weight'], v_content) as k (message);
      if (v_variant.v ->> 'name') !~ '^[a-z0-9][a-z0-9_]*$' then
        return next format('%s.variants[%s].name: invalid variant name', p_path, v_variant.idx);
      end if;
      if jsonb_typeof(v_variant.v -> 'weight') is distinct from 'number' or (v_variant.v ->> 'weight')::numeric <= 0 then
        return next format('%s.variants[%s].weight: expected a positive number', p_path, v_variant.idx);
      end if;
      return query select c.message from conveyor.campaign_template_shape_errors(v_variant.v,
        format('%s.variants[%s]', p_path, v_variant.idx)) as c (message);
    end loop;
  end if;
end;
$$;

create or replace function conveyor.campaign_errors(p_doc jsonb) returns setof text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_step record;
  v_ids jsonb := '{}';
begin
  if jsonb_typeof(p_doc) is distinct from 'object' then
    return next 'expected a campaign object';
    return;
  end if;
  return query select k.message from conveyor.document_key_errors(p_doc, '', array['slug', 'name', 'audience', 'steps'],
    array['description', 'connection', 'address_field', 'phone_field', 'timezone_field', 'send_window', 'send_rate',
      'stop_on', 'winner']) as k (message);
  if (p_doc ->> 'slug') !~ '^[a-z0-9][a-z0-9-]*$' then
    return next 'slug: expected lowercase letters, digits and -';
  end if;
  if p_doc ? 'audience' and not exists (select from conveyor.entities as e where e.entity = p_doc ->> 'audience') then
    return next format('audience: unknown entity %s (register it in conveyor.entities)', (p_doc -> 'audience')::text);
  end if;
  if p_doc ? 'send_window' then
    return query select w.message from conveyor.window_errors((p_doc -> 'send_window') - 'timezone'::text, 'send_window')
      as w (message);
  end if;
  if p_doc ? 'send_rate' and (jsonb_typeof(p_doc -> 'send_rate' -> 'per_minute') is distinct from 'number'
    or (p_doc -> 'send_rate' ->> 'per_minute')::numeric not between 1 and 1000000) then
    return next 'send_rate.per_minute: expected a whole number from 1 to 1000000';
  end if;
  if p_doc ? 'stop_on' then
    return query select k.message from conveyor.document_key_errors(p_doc -> 'stop_on', 'stop_on', '{}',
      array['bounce', 'complaint', 'unsubscribe']) as k (message);
  end if;
  if p_doc ? 'winner' then
    return query select k.message from conveyor.document_key_errors(p_doc -> 'winner', 'winner', array['metric'],
      array['min_sample', 'z']) as k (message);
    if p_doc -> 'winner' ->> 'metric' not in ('open', 'click', 'reply') then
      return next 'winner.metric: expected open, click or reply';
    end if;
  end if;
  if jsonb_typeof(p_doc -> 'steps') is distinct from 'array' or p_doc -> 'steps' = '[]' then
    return next 'steps: expected a non-empty array of steps';
    return;
  end if;
  if jsonb_array_length(p_doc -> 'steps') > 50 then
    return next 'steps: at most 50 steps';
    return;
  end if;
  for v_step in select (e.n - 1)::integer as idx, e.s from jsonb_array_elements(p_doc -> 'steps') with ordinality as e (s, n)
  loop
    return query select conveyor.campaign_step_errors(p_doc, v_step.s, format('steps[%s]', v_step.idx), v_step.idx);
    if v_ids ? (v_step.s ->> 'id') then
      return next format('steps[%s].id: duplicate step id "%s"', v_step.idx, v_step.s ->> 'id');
    end if;
    v_ids := v_ids || jsonb_build_object(coalesce(v_step.s ->> 'id', ''), v_step.idx);
  end loop;
end;
$$;

-- The steps of one send (a variant overrides its step's content): a template's content
-- step (conveyor.campaign_content renders it when the send is due), then the action.
-- p_id is the first step's id; the action is p_id's "-send" form.
create or replace function conveyor.campaign_send(p_doc jsonb, p_step jsonb, p_id text, p_next text, p_variant text)
returns jsonb
language plpgsql
stable
set search_path = ''
as $$
declare
  v_with jsonb;
  v_tags jsonb := jsonb_build_object('campaign_id', '{{trigger.payload.campaign_id}}',
    'enrollment_id', '{{trigger.payload.enrollment_id}}', 'step', p_step ->> 'id', 'variant', coalesce(p_variant, ''));
  v_step jsonb;
  v_content jsonb;
  v_send_id text := p_id;
  v_from_content text;
begin
  if p_step ? 'template' then
    v_send_id := replace(p_id, '-content', '-send');
    v_content := jsonb_build_object('id', p_id, 'campaign', jsonb_strip_nulls(jsonb_build_object('op', 'content',
      'template', p_step -> 'template', 'channel', p_step -> 'channel', 'data', p_step -> 'data')));
    -- the rendered html is escaped already (render_notification_part): raw here
    v_from_content := '{{steps.' || p_id || '.output.%s%s}}';
    p_step := p_step || jsonb_build_object('subject', format(v_from_content, 'subject', ''),
      'html', format(v_from_content, 'html', ' | raw'), 'text', format(v_from_content, 'text', ''),
      'body', format(v_from_content, 'body', ''));
  end if;
  if p_step ->> 'channel' = 'email' then
    v_with := jsonb_strip_nulls(jsonb_build_object(
      'to', format('{{vars.contact.%s}}', coalesce(p_doc ->> 'address_field', 'email')),
      'subject', p_step -> 'subject', 'html', p_step -> 'html', 'text', p_step -> 'text'));
    v_step := jsonb_build_object('id', v_send_id, 'action', 'email.send', 'with', v_with, 'next', p_next);
    -- delivery tracking (migration 0034): tags for the counters, one-click unsubscribe
    if to_regclass('conveyor.email_messages') is not null then
      v_step := v_step || jsonb_build_object('tags', v_tags, 'list_unsubscribe', true);
    end if;
  else
    v_step := jsonb_build_object('id', v_send_id, 'action', 'sms.send', 'with', jsonb_build_object(
      'to', format('{{vars.contact.%s}}', coalesce(p_doc ->> 'phone_field', 'phone')), 'body', p_step -> 'body'),
      'next', p_next);
  end if;
  if p_doc ? 'connection' then
    v_step := v_step || jsonb_build_object('connection', p_doc -> 'connection');
  end if;
  return conveyor.campaign_rewrite(case when v_content is null then jsonb_build_array(v_step)
    else jsonb_build_array(v_content, v_step) end);
end;
$$;

-- A variant's step: the step with the variant's content over the step's, field by field;
-- a variant's template replaces the step's inline content, its inline content the step's
-- template.
create or replace function conveyor.campaign_variant_step(p_step jsonb, p_variant jsonb) returns jsonb
language sql
immutable
parallel safe
set search_path = ''
as $$
  select (p_step - 'variants'
      - case when p_variant ? 'template' then array['subject', 'html', 'text', 'body'] else '{}'::text[] end
      - case when p_variant ?| array['subject', 'html', 'text', 'body'] then array['template', 'data']
        else '{}'::text[] end)
    || (p_variant - 'name' - 'weight');
$$;

-- The workflow a campaign document compiles into (slug "campaign-<slug>", manual trigger).
create or replace function conveyor.compile_campaign(p_doc jsonb) returns jsonb
language plpgsql
stable
set search_path = ''
as $$
declare
  v_steps jsonb := p_doc -> 'steps';
  v_n integer := jsonb_array_length(p_doc -> 'steps');
  v_out jsonb := '[]';
  v_tail jsonb := '[]';
  v_step jsonb;
  v_prev jsonb;
  v_next jsonb;
  v_id text;
  v_after text;
  v_window jsonb;
  v_waits boolean;
  v_variant record;
  v_split jsonb;
  v_gone boolean := false;
begin
  v_window := p_doc -> 'send_window';
  if v_window ->> 'timezone' = 'contact' then
    v_window := v_window || jsonb_build_object('timezone',
      format('{{vars.contact.%s | default: ''UTC''}}', coalesce(p_doc ->> 'timezone_field', 'timezone')));
  end if;
  for i in 0..v_n - 1 loop
    v_step := v_steps -> i;
    v_prev := v_steps -> (i - 1);
    v_next := v_steps -> (i + 1);
    v_id := v_step ->> 'id';
    -- where this step goes on: the next step's wait for a halt, its start, or the end
    v_waits := v_step ->> 'channel' = 'email' and v_next ? 'delay';
    v_after := case when v_waits then v_id || '-wait'
      when v_next is null then 'done'
      when v_next ? 'delay' then (v_next ->> 'id') || '-delay'
      else (v_next ->> 'id') || '-start' end;
    -- a plain delay, unless the previous email's wait was the delay (and nothing skips to it)
    if v_step ? 'delay' and (i = 0 or v_prev ->> 'channel' <> 'email' or v_prev ? 'skip_if') then
      v_out := v_out || jsonb_build_object('id', v_id || '-delay', 'delay', jsonb_build_object('for', v_step -> 'delay'));
    end if;
    -- every step starts with a no-op marker the previous wait resumes at
    v_out := v_out || jsonb_build_object('id', v_id || '-start', 'set', jsonb_build_object('campaign_step', v_id));
    -- a send or task reads the contact as it is now; a deleted one ends the enrollment
    if v_step ->> 'channel' <> 'wait' then
      v_out := v_out || jsonb_build_object('id', v_id || '-contact', 'campaign', jsonb_build_object('op', 'contact',
        'entity', p_doc ->> 'audience'))
        || jsonb_build_object('id', v_id || '-present', 'if', jsonb_build_object('field', 'vars.contact', 'op', 'is_null'),
          'then', 'contact-deleted');
      v_gone := true;
    end if;
    if v_step ? 'skip_if' then
      v_out := v_out || conveyor.campaign_rewrite(jsonb_build_object('id', v_id || '-skip', 'if', v_step -> 'skip_if',
        'then', case when v_next is null then 'done' when v_next ? 'delay' then (v_next ->> 'id') || '-delay'
          else (v_next ->> 'id') || '-start' end));
    end if;
    if v_step ->> 'channel' in ('email', 'sms') then
      v_out := v_out || jsonb_build_object('id', v_id || '-slot', 'campaign', jsonb_strip_nulls(jsonb_build_object(
        'op', 'slot', 'key', v_step ->> 'channel',
        'per_minute', coalesce(p_doc -> 'send_rate' -> 'per_minute', '1000000'::jsonb), 'window', v_window)));
      -- resumed more than a minute after its slot (the tick fell behind): a new one, so late
      -- sends keep the rate instead of going out together
      v_out := v_out || jsonb_build_object('id', v_id || '-ontime', 'campaign', jsonb_strip_nulls(jsonb_build_object(
        'op', 'slot', 'key', v_step ->> 'channel',
        'per_minute', coalesce(p_doc -> 'send_rate' -> 'per_minute', '1000000'::jsonb), 'window', v_window,
        'unless_on_time', format('{{steps.%s-slot.output.send_at}}', v_id))));
      if v_step ? 'variants' then
        v_split := '[]';
        for v_variant in select e.v from jsonb_array_elements(v_step -> 'variants') as e (v) loop
          v_split := v_split || jsonb_build_object('weight', v_variant.v -> 'weight', 'name', v_variant.v ->> 'name',
            'goto', v_id || case when conveyor.campaign_variant_step(v_step, v_variant.v) ? 'template' then '-content-'
              else '-send-' end || (v_variant.v ->> 'name'));
        end loop;
        v_out := v_out || jsonb_build_object('id', v_id || '-ab', 'split', v_split);
        for v_variant in select e.v from jsonb_array_elements(v_step -> 'variants') as e (v) loop
          v_out := v_out || conveyor.campaign_send(p_doc, conveyor.campaign_variant_step(v_step, v_variant.v),
            v_id || case when conveyor.campaign_variant_step(v_step, v_variant.v) ? 'template' then '-content-'
              else '-send-' end || (v_variant.v ->> 'name'), v_after, v_variant.v ->> 'name');
        end loop;
      else
        v_out := v_out || conveyor.campaign_send(p_doc, v_step,
          v_id || case when v_step ? 'template' then '-content' else '-send' end, v_after, null);
      end if;
    elsif v_step ->> 'channel' = 'task' then
      v_out := v_out || conveyor.campaign_rewrite(jsonb_build_object('id', v_id || '-task', 'notify', jsonb_strip_nulls(
        jsonb_build_object('to', v_step -> 'to', 'title', v_step -> 'title', 'message', v_step -> 'message',
          'type', 'action_required')), 'next', v_after));
    else
      v_out := v_out || jsonb_build_object('id', v_id || '-wait-over', 'set', jsonb_build_object('campaign_waited', v_id),
        'next', v_after);
    end if;
    if v_waits then
      v_out := v_out || jsonb_build_object('id', v_id || '-wait', 'wait_for_event', jsonb_build_object(
        'event', 'campaign.enrollment.halted', 'match', jsonb_build_object('entity_id', '{{trigger.payload.enrollment_id}}'),
        'timeout', v_next -> 'delay'), 'on_event', v_id || '-halted', 'on_timeout', (v_next ->> 'id') || '-start');
      v_tail := v_tail || jsonb_build_object('id', v_id || '-halted', 'campaign', jsonb_build_object('op', 'finish',
        'status', 'stopped', 'reason', format('{{steps.%s-wait.output.event.payload.reason}}', v_id)), 'next', null);
    end if;
  end loop;
  v_out := v_out || jsonb_build_object('id', 'done', 'campaign', jsonb_build_object('op', 'finish', 'status', 'completed'),
    'next', null);
  if v_gone then
    v_tail := v_tail || jsonb_build_object('id', 'contact-deleted', 'campaign', jsonb_build_object('op', 'finish',
      'status', 'stopped', 'reason', 'contact_deleted'), 'next', null);
  end if;
  return jsonb_build_object(
    'slug', 'campaign-' || (p_doc ->> 'slug'),
    'name', 'Campaign: ' || (p_doc ->> 'name'),
    'description', 'Generated from campaign "' || (p_doc ->> 'slug') || '" (conveyor campaigns show); do not edit.',
    'category', 'campaign',
    'trigger', jsonb_build_object('manual', true),
    'steps', v_out || v_tail
  );
end;
$$;
