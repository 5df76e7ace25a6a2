-- Email and SMS deliveries of notifications (docs/notifications.md#channels): a row of
-- conveyor.notification_deliveries per notification and channel, sent as a message of
-- the action queue conveyor_actions that the runner performs with its email.send /
-- sms.send and writes back with conveyor.write_back_deliveries. A delivery's message
-- names a delivery_id where a step's names a step_run_id; read_actions, write_back and
-- the step path do not change (docs/architecture.md, "How a delivery travels").

-- Sets (p_connection_name null: clears) the connection that sends the tenant's
-- notifications on p_channel: an smtp connection for email, a twilio one for sms.
create or replace function conveyor.set_notification_channel(p_tenant_id text, p_channel text, p_connection_name text)
returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_kind text;
  v_wanted text := case p_channel when 'email' then 'smtp' when 'sms' then 'twilio' end;
begin
  perform conveyor.require_tenant(p_tenant_id);
  if v_wanted is null then
    raise exception using errcode = '22023',
      message = format('p_channel: %L is not a notification channel (email or sms)', p_channel);
  end if;
  if p_connection_name is null then
    delete from conveyor.notification_channels as c where c.tenant_id = p_tenant_id and c.channel = p_channel;
    return;
  end if;
  select c.kind into v_kind from conveyor.connections as c where c.tenant_id = p_tenant_id and c.name = p_connection_name;
  if v_kind is null then
    raise exception using errcode = '22023',
      message = format('%s channel: tenant %L has no connection named %L', p_channel, p_tenant_id, p_connection_name);
  elsif v_kind <> v_wanted then
    raise exception using errcode = '22023',
      message = format('%s channel: connection %L is a %s connection; %s needs a %s connection', p_channel,
        p_connection_name, v_kind, p_channel, v_wanted);
  end if;
  insert into conveyor.notification_channels as c (tenant_id, channel, connection_name)
  values (p_tenant_id, p_channel, p_connection_name)
  on conflict (tenant_id, channel) do update set connection_name = excluded.connection_name, updated_at = now();
end;
$$;

-- How many times a delivery is attempted before it fails (setting
-- conveyor.notification_delivery_attempts, default 3), and the backoff between attempts.
create or replace function conveyor.notification_delivery_attempts()
returns integer
language plpgsql
stable
set search_path = ''
as $$
begin
  return conveyor.limit_setting('notification_delivery_attempts', 3)::integer;
end;
$$;

-- A delivery's queue message: the keys of a step's action message (conveyor.action_message)
-- with delivery_id in place of step_run_id, execution_id and workflow_id.
create or replace function conveyor.delivery_message(p_delivery conveyor.notification_deliveries)
returns jsonb
language plpgsql
immutable
set search_path = ''
as $$
begin
  return jsonb_build_object(
    'delivery_id', p_delivery.delivery_id,
    'tenant_id', p_delivery.tenant_id,
    'action', case p_delivery.channel when 'email' then 'email.send' else 'sms.send' end,
    'connection', p_delivery.connection_name,
    'input', coalesce(p_delivery.content, '{}') || jsonb_build_object('to', p_delivery.address),
    'idempotency_key', 'notification-delivery:' || p_delivery.delivery_id,
    'attempt', p_delivery.attempts,
    'timeout_s', 30
  );
end;
$$;

-- Queues the messages of deliveries (pending or held, or queued for a retry), visible
-- after p_delay_s seconds: each becomes 'queued', its attempt counted, its msg_id kept.
-- The messages go through the queue's one writer (conveyor.queue_messages).
create or replace function conveyor.queue_deliveries(p_delivery_ids bigint[], p_delay_s integer default 0)
returns integer
language plpgsql
set search_path = ''
-- Every statement reaches its rows by primary key: a plan cached while the table was small
-- (a new install) scanned every delivery per call (measured: 0.5 ms at 6,000 deliveries).
set enable_seqscan = off
as $$
declare
  v_count integer;
  v_ids bigint[];
  v_sent bigint[];
begin
  if coalesce(cardinality(p_delivery_ids), 0) = 0 then
    return 0;
  end if;
  update conveyor.notification_deliveries as d
  set status = 'queued', attempts = d.attempts + 1, due_at = null
  where d.delivery_id = any(p_delivery_ids) and d.status in ('pending', 'held', 'queued');
  get diagnostics v_count = row_count;
  v_ids := array(
    select x.delivery_id from conveyor.notification_deliveries as x
    where x.delivery_id = any(p_delivery_ids) and x.status = 'queued' order by x.delivery_id
  );
  -- queue_messages inserts the messages in the order given, so their msg_ids (an identity)
  -- ascend with the delivery ids
  v_sent := array(
    select m.msg_id
    from conveyor.queue_messages(array(
      select conveyor.delivery_message(x) from conveyor.notification_deliveries as x
      where x.delivery_id = any(v_ids) order by x.delivery_id
    ), p_delay_s) as m
    order by m.msg_id
  );
  -- row by row, by primary key (mostly one or two: a join with unnest was planned as a
  -- scan of every delivery)
  for i in 1..coalesce(cardinality(v_ids), 0) loop
    update conveyor.notification_deliveries as d set msg_id = v_sent[i] where d.delivery_id = v_ids[i];
  end loop;
  return v_count;
end;
$$;

-- Why a channel cannot be sent for a tenant's user now (null: it can): the tenant has
-- no connection for it, or the user no address on it.
create or replace function conveyor.delivery_obstacle(p_channel text, p_connection text, p_address text)
returns text
language sql
immutable
set search_path = ''
as $$
  select case
    when p_connection is null
      then format('no %s connection is set for the tenant (conveyor.set_notification_channel)', p_channel)
    when p_address is null then 'no address'
  end;
$$;

-- The email / SMS deliveries of a new notification, by the user's preference decision
-- per channel (conveyor.resolve_notification_channels): sent now (queued in this
-- transaction), held until the decision's time, added to the digest due next, or dropped
-- with the reason (a channel the user did not choose gets no row). p_content: the
-- rendered content of each channel that is sent or held. p_recipient:
-- conveyor.notification_recipient; p_connections: the tenant's connection by channel
-- (conveyor.notification_channels). The ids of the deliveries, by channel.
drop function if exists conveyor.plan_deliveries(conveyor.notifications, jsonb, jsonb, jsonb);
create or replace function conveyor.plan_deliveries(
  p_notification conveyor.notifications, p_decisions jsonb, p_content jsonb, p_recipient jsonb, p_connections jsonb
)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_channel text;
  v_decision jsonb;
  v_connection text;
  v_address text;
  v_reason text;
  v_id bigint;
  v_ids jsonb := '{}';
  v_send bigint[] := '{}';
begin
  foreach v_channel in array array['email', 'sms'] loop
    v_decision := p_decisions -> v_channel;
    continue when v_decision is null or coalesce((v_decision ->> 'chosen')::boolean, true) = false;
    if v_decision ->> 'action' = 'digest' then
      insert into conveyor.notification_deliveries (tenant_id, notification_id, digest_id, user_id, channel, status)
      values (p_notification.tenant_id, p_notification.notification_id, conveyor.add_to_digest(
        p_notification.tenant_id, p_notification.user_id, v_decision ->> 'frequency', (v_decision ->> 'due_at')::timestamptz
      ), p_notification.user_id, v_channel, 'digested')
      returning delivery_id into v_id;
    else
      v_connection := p_connections ->> v_channel;
      v_address := p_recipient ->> case v_channel when 'email' then 'email' else 'phone' end;
      v_reason := case
        when v_decision ->> 'action' = 'drop' then v_decision ->> 'reason'
        when p_content -> v_channel is null then format('the notification has no %s content', v_channel)
        else conveyor.delivery_obstacle(v_channel, v_connection, v_address)
      end;
      insert into conveyor.notification_deliveries (
        tenant_id, notification_id, user_id, channel, address, status, reason, due_at, connection_name, content,
        finished_at
      )
      values (
        p_notification.tenant_id, p_notification.notification_id, p_notification.user_id, v_channel, v_address,
        case when v_reason is not null then 'dropped' when v_decision ->> 'action' = 'hold' then 'held' else 'pending' end,
        v_reason,
        case when v_reason is null and v_decision ->> 'action' = 'hold' then (v_decision ->> 'until')::timestamptz end,
        v_connection, case when v_reason is null then p_content -> v_channel end,
        case when v_reason is not null then now() end
      )
      returning delivery_id into v_id;
      if v_reason is null and v_decision ->> 'action' = 'send' then
        v_send := v_send || v_id;
      end if;
    end if;
    v_ids := v_ids || jsonb_build_object(v_channel, v_id);
  end loop;
  perform conveyor.queue_deliveries(v_send);
  return v_ids;
end;
$$;

-- When the next held delivery or digest falls due (null: none); two probes of partial
-- indexes, so a tick costs nothing more while no notification waits.
create or replace function conveyor.next_notification_due_at()
returns timestamptz
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  return least(
    (select min(d.due_at) from conveyor.notification_deliveries as d where d.status = 'held'),
    (select min(g.due_at) from conveyor.notification_digests as g where g.status = 'open')
  );
end;
$$;

-- The tick's part (sql/tick.sql): queues the held deliveries that fell due and composes the
-- digests that fell due (conveyor.compose_digest), at most p_batch of each, skipping rows
-- another tick holds. How many deliveries and digests it handled.
create or replace function conveyor.release_notifications(p_now timestamptz, p_batch integer default 1000)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_held bigint[];
  v_digest bigint;
  v_count integer := 0;
begin
  v_held := array(
    select d.delivery_id from conveyor.notification_deliveries as d
    where d.status = 'held' and d.due_at <= p_now
    order by d.due_at
    limit p_batch
    for update skip locked
  );
  v_count := conveyor.queue_deliveries(v_held);
  for v_digest in
    select g.digest_id from conveyor.notification_digests as g
    where g.status = 'open' and g.due_at <= p_now
    order by g.due_at
    limit p_batch
    for update skip locked
  loop
    perform conveyor.compose_digest(v_digest);
    v_count := v_count + 1;
  end loop;
  return v_count;
end;
$$;

-- Whether the delivery that message p_message names still waits for it (queued, with this
-- msg_id): read_actions' check of a redelivered delivery message (conveyor.message_awaited).
create or replace function conveyor.delivery_awaited(p_msg_id bigint, p_message jsonb)
returns boolean
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  return exists (
    select from conveyor.notification_deliveries as d
    where d.delivery_id = conveyor.jsonb_bigint(p_message -> 'delivery_id') and d.status = 'queued'
      and d.msg_id = p_msg_id
  );
end;
$$;

-- The runner's write-back of delivery results (the runner sends a batch's delivery
-- results here and its step results to conveyor.write_back). p_results: [{"msg_id",
-- "delivery_id", "ok", "output"?, "retryable"?, "retry_after_s"?, "error"?,
-- "dead_letter"?}]. A result applies once: to a delivery still queued on that message
-- ('applied'); any other is 'ignored' (late, duplicate). Sent, or failed (a permanent
-- error, attempts used up, a dead letter: the message is kept in conveyor.dead_letters),
-- or queued again after the backoff (a retryable error with attempts left, setting
-- conveyor.notification_delivery_attempts). Every message named is archived. A result
-- the database refuses fails its delivery alone.
create or replace function conveyor.write_back_deliveries(p_results jsonb)
returns table (msg_id bigint, delivery_id bigint, outcome text)
language plpgsql
security definer
set search_path = ''
-- by primary key, whatever the table's size when the plan was cached (as queue_deliveries)
set enable_seqscan = off
as $$
#variable_conflict use_column
declare
  v_result jsonb;
  v_delivery conveyor.notification_deliveries;
  v_archive bigint[] := '{}';
  v_dead text;
  v_error jsonb;
  v_state text;
  v_msg text;
begin
  if jsonb_typeof(p_results) is distinct from 'array' then
    raise exception using errcode = '22023', message = 'write_back_deliveries: results must be a JSON array';
  end if;
  for v_result in
    select x.value from jsonb_array_elements(p_results) as x (value)
    order by conveyor.jsonb_bigint(x.value -> 'delivery_id')
  loop
    msg_id := conveyor.jsonb_bigint(v_result -> 'msg_id');
    delivery_id := conveyor.jsonb_bigint(v_result -> 'delivery_id');
    outcome := 'ignored';
    v_dead := v_result ->> 'dead_letter';
    begin
      select d.* into v_delivery from conveyor.notification_deliveries as d
      where d.delivery_id = write_back_deliveries.delivery_id
      for update;
      v_error := case
        when jsonb_typeof(v_result -> 'error') = 'object' then v_result -> 'error'
        else jsonb_build_object('message', coalesce(v_result ->> 'error', 'delivery failed'))
      end;
      if v_delivery.status = 'queued' and v_delivery.msg_id = write_back_deliveries.msg_id then
        outcome := 'applied';
        if coalesce((v_result ->> 'ok')::boolean, false) then
          update conveyor.notification_deliveries as d
          set status = 'sent', output = v_result -> 'output', error = null, finished_at = now()
          where d.delivery_id = v_delivery.delivery_id;
        elsif v_dead is null and coalesce((v_result ->> 'retryable')::boolean, false)
          and v_delivery.attempts < conveyor.notification_delivery_attempts()
        then
          update conveyor.notification_deliveries as d
          set error = v_error || jsonb_build_object('attempt', v_delivery.attempts)
          where d.delivery_id = v_delivery.delivery_id;
          perform conveyor.queue_deliveries(array[v_delivery.delivery_id], conveyor.retry_delay_s(
            '{"backoff": "exponential", "initial": "30s", "max": "1h", "jitter": true}', v_delivery.attempts,
            (v_result ->> 'retry_after_s')::numeric
          ));
        else
          update conveyor.notification_deliveries as d
          set status = 'failed', output = v_result -> 'output', finished_at = now(),
            error = v_error || jsonb_build_object('attempt', v_delivery.attempts)
              || case when v_dead is null then '{}'::jsonb else jsonb_build_object('dead_letter', v_dead) end
          where d.delivery_id = v_delivery.delivery_id;
        end if;
      end if;
      if v_dead is not null and msg_id is not null and conveyor.keep_dead_letter(msg_id, v_dead, v_error ->> 'message') then
        outcome := 'dead_lettered';
      end if;
    exception when others then
      get stacked diagnostics v_state = returned_sqlstate, v_msg = message_text;
      if conveyor.error_is_transient(v_state) then
        raise;
      end if;
      -- refused (its output, say): the delivery fails with why, the message is kept
      update conveyor.notification_deliveries as d
      set status = 'failed', finished_at = now(), error = jsonb_build_object(
        'message', format('the database refused the delivery''s result (SQLSTATE %s: %s)', v_state, v_msg),
        'type', 'result_refused')
      where d.delivery_id = write_back_deliveries.delivery_id and d.status = 'queued'
        and d.msg_id = write_back_deliveries.msg_id;
      perform conveyor.keep_dead_letter(msg_id, 'result_refused', v_msg);
      outcome := 'dead_lettered';
    end;
    if msg_id is not null then
      v_archive := v_archive || msg_id;
    end if;
    return next;
  end loop;
  perform conveyor.archive_actions(v_archive);
end;
$$;

revoke all on function conveyor.delivery_message(conveyor.notification_deliveries) from public;
revoke all on function conveyor.queue_deliveries(bigint[], integer) from public;
revoke all on function conveyor.plan_deliveries(conveyor.notifications, jsonb, jsonb, jsonb, jsonb) from public;
revoke all on function conveyor.release_notifications(timestamptz, integer) from public;
revoke all on function conveyor.delivery_awaited(bigint, jsonb) from public;
revoke all on function conveyor.write_back_deliveries(jsonb) from public;
grant execute on function conveyor.write_back_deliveries(jsonb) to conveyor_service;
