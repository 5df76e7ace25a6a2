-- The hand-off to the runner: action messages, their queue, and the retry delays.
--
-- An external action is a step_run in status 'queued' plus one message in the pgmq queue
-- conveyor_actions carrying the fully rendered input. The runner reads it here
-- (read_actions), performs it and calls conveyor.write_back (sql/write_back.sql), which
-- (guards first) applies the result exactly once, decides retries and error policies in
-- SQL, archives the message and continues the execution, all in the runner's one
-- transaction.

-- The JSON value as a bigint when it is a whole number within bigint's range, else null:
-- a message or a result names its step run and message by such numbers, and a malformed
-- one (`"abc"`, `1e300`, `1.5`) must not fail the statement that reads it. No SET clause,
-- unlike the house rule: it is inlined into the statements that call it (a function with
-- one is never inlined); it names only pg_catalog.
create or replace function conveyor.jsonb_bigint(p_value jsonb)
returns bigint
language sql
immutable
parallel safe
as $$
  select case
    when pg_catalog.jsonb_typeof(p_value) = 'number'
      and (p_value #>> '{}')::numeric between -9223372036854775808 and 9223372036854775807
      and (p_value #>> '{}')::numeric = pg_catalog.trunc((p_value #>> '{}')::numeric)
      then (p_value #>> '{}')::numeric::bigint
  end;
$$;

-- An action's queue message: what the runner needs to perform it, fully rendered. Built
-- here for both senders: the interpreter (a new action, with its step run) and
-- send_actions (a retry, or a message sent again).
create or replace function conveyor.action_message(
  p_run conveyor.step_runs,
  p_workflow_id bigint,
  p_step conveyor.workflow_steps
)
returns jsonb
language plpgsql
immutable
set search_path = ''
as $$
begin
  return jsonb_build_object(
    'step_run_id', p_run.step_run_id,
    'execution_id', p_run.execution_id,
    'tenant_id', p_run.tenant_id,
    'workflow_id', p_workflow_id,
    'step_id', p_run.step_id,
    'action', p_step.action_type,
    -- an action step's spec is its config (conveyor.step_spec, inlined)
    'connection', p_step.config ->> 'connection',
    'input', p_run.input,
    'idempotency_key', p_run.idempotency_key,
    'attempt', p_run.attempt,
    -- clamped to the integer's range: a version stored before the timeout limits (the
    -- interpreter refuses it, but not every caller is the interpreter) must not overflow
    'timeout_s', case
      when p_step.timeout is not null then ceil(least(greatest(extract(epoch from p_step.timeout), 0), 2147483647))::integer
    end
  );
end;
$$;

-- Puts messages into the action queue in the order given, visible after p_delay_s
-- seconds; returns each one's msg_id with the step run it carries. Both senders write
-- through here (the interpreter a new action's, with its step run; send_actions a retry's)
-- and the runners are woken with one notification per transaction (a delayed message is
-- found by their poll once it becomes visible).
--
-- The queue is pgmq's (conveyor_actions); the message rows go into its table with one
-- static statement (what pgmq.send_batch does, without building its SQL per call and
-- without a second pass to map msg_ids back): the runner's read, this send and the
-- archive are the queue's hot path, each written once here (read_actions, archive_actions).
create or replace function conveyor.queue_messages(p_messages jsonb[], p_delay_s integer default 0)
returns table (msg_id bigint, step_run_id bigint)
language plpgsql
set search_path = ''
as $$
begin
  return query
  insert into pgmq.q_conveyor_actions (vt, message)
  select
    pg_catalog.clock_timestamp() + pg_catalog.make_interval(secs => greatest(coalesce(p_delay_s, 0), 0)),
    m.message
  from unnest(p_messages) with ordinality as m (message, n)
  order by m.n
  returning q_conveyor_actions.msg_id, (q_conveyor_actions.message ->> 'step_run_id')::bigint;
  if found and coalesce(p_delay_s, 0) <= 0 then
    perform pg_catalog.pg_notify('conveyor_actions', 'queued');
  end if;
end;
$$;

-- Sends the messages of queued action step_runs (visible after p_delay_s seconds) and
-- records each message's msg_id on its step_run. Returns how many messages were sent.
-- (A new action's message is sent by the interpreter with its step run.)
create or replace function conveyor.send_actions(p_step_run_ids bigint[], p_delay_s integer default 0)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_sent integer;
begin
  if coalesce(pg_catalog.cardinality(p_step_run_ids), 0) = 0 then
    return 0;  -- most write-backs reach no new action
  end if;
  with messages as (
    select r.step_run_id, conveyor.action_message(r.run, r.workflow_id, r.step) as message
    -- Driven by the ids: three primary-key lookups per id, whatever the tables' sizes.
    -- `offset 0` keeps the lateral subquery from being flattened into one join the
    -- planner may reorder: plpgsql's cached generic plan, made while the tables were small
    -- (a new install's first burst), scanned every execution of the workflow per call.
    from unnest(p_step_run_ids) as ids (step_run_id)
    cross join lateral (
      select r.step_run_id, r as run, e.workflow_id, s as step
      from conveyor.step_runs as r
      join conveyor.executions as e on e.execution_id = r.execution_id
      join conveyor.workflow_steps as s
        on s.workflow_id = e.workflow_id and s.version = e.version and s.step_id = r.step_id
      where r.step_run_id = ids.step_run_id and r.status = 'queued' and s.kind = 'action'
      offset 0
    ) as r
  ),
  sent as (
    select q.msg_id, q.step_run_id
    from conveyor.queue_messages(array(select m.message from messages as m order by m.step_run_id), p_delay_s) as q
  )
  update conveyor.step_runs as r
  set msg_id = sent.msg_id
  from sent
  where r.step_run_id = sent.step_run_id;
  get diagnostics v_sent = row_count;
  return v_sent;
end;
$$;

drop function if exists conveyor.send_unsent_actions(bigint[]);  -- folded into send_new_actions
-- the interpreter sends the actions it reaches with their step runs (interpret_executions)
drop function if exists conveyor.send_new_actions(bigint[]);

-- Sends (or sends again) one queued step_run's message after p_delay_s seconds.
create or replace function conveyor.enqueue_action(p_step_run_id bigint, p_delay_s integer default 0)
returns bigint
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_msg_id bigint;
begin
  if conveyor.send_actions(array[p_step_run_id], p_delay_s) = 0 then
    raise exception using
      errcode = '22023',
      message = format('step run %s is not a queued action', p_step_run_id);
  end if;
  select r.msg_id into v_msg_id from conveyor.step_runs as r where r.step_run_id = p_step_run_id;
  return v_msg_id;
end;
$$;

-- Whether the step run message p_msg_id names still waits for it (queued, with this msg_id);
-- for a notification delivery's message (it names a delivery_id), whether the delivery does.
create or replace function conveyor.message_awaited(p_msg_id bigint, p_message jsonb)
returns boolean
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  if p_message ? 'delivery_id' then
    return conveyor.delivery_awaited(p_msg_id, p_message);
  end if;
  return exists (
    select from conveyor.step_runs as r
    where r.step_run_id = conveyor.jsonb_bigint(p_message -> 'step_run_id') and r.status = 'queued'
      and r.msg_id = p_msg_id
  );
end;
$$;

-- The runner's read: up to p_qty visible messages, each made invisible for its own action's
-- timeout (the message's timeout_s, else p_default_timeout_s) plus p_margin_s, rounded up
-- to whole seconds; read_ct counts the delivery. What pgmq.read does, with a visibility
-- timeout per message in the same statement (pgmq.read takes one for the whole batch,
-- and builds its SQL per call). Written against the queue table's layout: the DO block
-- also sets last_read_at where the installed pgmq has that column (pgmq >= 1.5).
--
-- Both numbers are clamped to 2^31 - 1 s each (the largest timeout_s action_message
-- writes, whatever conveyor.max_action_timeout allows): one message with a timeout_s of
-- 1e300 made every read fail with "timestamp out of range", which blocked the queue for
-- every tenant.
--
-- dead_letter says when the message must not be performed (the runner writes it back as a
-- dead letter instead, docs/queue.md): 'max_deliveries' once it has been delivered more
-- than conveyor.max_action_deliveries times without a result, 'step_run_gone' when it is
-- delivered again and the step run it names no longer waits for it (gone, finished, or
-- waiting for another message); null otherwise.
-- (its result gained dead_letter in 0023: a function's result type changes by drop and create)
do $do$
begin
  if exists (
    select from pg_catalog.pg_proc
    where oid = pg_catalog.to_regprocedure('conveyor.read_actions(integer, numeric, numeric)')
      and not 'dead_letter' = any(proargnames)
  ) then
    drop function conveyor.read_actions(integer, numeric, numeric);
  end if;
end;
$do$;

do $do$
declare
  v_last_read text := case
    when exists (
      select from pg_catalog.pg_attribute
      where attrelid = 'pgmq.q_conveyor_actions'::regclass and attname = 'last_read_at' and not attisdropped
    ) then 'last_read_at = pg_catalog.clock_timestamp(),'
    else ''
  end;
begin
  execute format($fn$
create or replace function conveyor.read_actions(
  p_qty integer,
  p_margin_s numeric,
  p_default_timeout_s numeric default 30
)
returns table (msg_id bigint, read_ct integer, message jsonb, dead_letter text)
language plpgsql
security definer
set search_path = ''
-- One plan for the session: a custom plan per call cost ~90 us of planning per read. The
-- generic plan walks the primary key in msg_id order from its start, whatever the queue's
-- size (enable_seqscan off: a plan made while the queue was small must not scan and sort it).
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
as $$
#variable_conflict use_column
declare
  v_tenants text[];
  v_after bigint[];
  v_ids bigint[] := array[]::bigint[];
  v_round_ids bigint[];
  v_left integer := greatest(coalesce(p_qty, 0), 0);
  v_share integer;
  v_round integer := 0;
  v_first text;
begin
  -- Which messages: each tenant with messages queued takes its share of the read, its
  -- oldest visible ones first; what a tenant leaves unused is shared again between those
  -- that had more (conveyor.claim_events does the same for dispatch; docs/queue.md
  -- "Fairness"). The tenants are found by a skip scan of q_conveyor_actions_tenant_idx.
  -- One tenant queued (two probes of that index tell) is the common case, and the read is
  -- then what it was before tenants were told apart: the oldest visible messages.
  select coalesce(q.message ->> 'tenant_id', '') into v_first
  from pgmq.q_conveyor_actions as q
  order by coalesce(q.message ->> 'tenant_id', ''), q.msg_id
  limit 1;
  if v_first is null then
    return;
  end if;
  if not exists (
    select from pgmq.q_conveyor_actions as q where coalesce(q.message ->> 'tenant_id', '') > v_first
  ) then
    select coalesce(array_agg(n.msg_id), '{}') into v_ids
    from (
      select q.msg_id
      from pgmq.q_conveyor_actions as q
      where q.vt <= pg_catalog.clock_timestamp()
      order by q.msg_id
      limit v_left
      for update skip locked
    ) as n;
    v_left := 0;
  else
    with recursive t (tenant_id, first_id, n) as (
      (
        select coalesce(q.message ->> 'tenant_id', ''), q.msg_id, 1
        from pgmq.q_conveyor_actions as q
        order by coalesce(q.message ->> 'tenant_id', ''), q.msg_id
        limit 1
      )
      union all
      select nx.tenant_id, nx.msg_id, t.n + 1
      from t
      cross join lateral (
        select coalesce(q.message ->> 'tenant_id', '') as tenant_id, q.msg_id
        from pgmq.q_conveyor_actions as q
        where coalesce(q.message ->> 'tenant_id', '') > t.tenant_id
        order by coalesce(q.message ->> 'tenant_id', ''), q.msg_id
        limit 1
      ) as nx
      where t.n < 10000
    )
    -- the tenants whose oldest message is oldest first: with more tenants than places, those
    -- that have waited longest are served
    select array_agg(t.tenant_id order by t.first_id) into v_tenants from t;
  end if;

  while v_left > 0 and coalesce(pg_catalog.cardinality(v_tenants), 0) > 0 and v_round < 8 loop
    v_round := v_round + 1;
    select r.tenants, r.after, r.share into v_tenants, v_after, v_share
    from conveyor.fair_round(v_left, v_tenants, v_after) as r;
    with taken as (
      select c.msg_id, c.tenant_id
      from unnest(v_tenants, coalesce(v_after, array[]::bigint[])) as w (tenant_id, after_id)
      cross join lateral (
        select q.msg_id, coalesce(q.message ->> 'tenant_id', '') as tenant_id
        from pgmq.q_conveyor_actions as q
        where (coalesce(q.message ->> 'tenant_id', ''), q.msg_id) > (w.tenant_id, coalesce(w.after_id, 0))
          and coalesce(q.message ->> 'tenant_id', '') = w.tenant_id
          and q.vt <= pg_catalog.clock_timestamp()
        order by coalesce(q.message ->> 'tenant_id', ''), q.msg_id
        limit v_share
        for update skip locked
      ) as c
    ),
    filled as (
      select tk.tenant_id, max(tk.msg_id) as last_id
      from taken as tk
      group by tk.tenant_id
      having count(*) >= v_share
    )
    select
      array_agg(k.msg_id),
      (select array_agg(f.tenant_id order by f.tenant_id) from filled as f),
      (select array_agg(f.last_id order by f.tenant_id) from filled as f)
    into v_round_ids, v_tenants, v_after
    from taken as k;
    exit when v_round_ids is null;
    v_ids := v_ids || v_round_ids;
    v_left := v_left - pg_catalog.cardinality(v_round_ids);
  end loop;
  if pg_catalog.cardinality(v_ids) = 0 then
    return;
  end if;

  return query
  update pgmq.q_conveyor_actions as m
  set
    %s
    read_ct = m.read_ct + 1,
    vt = pg_catalog.clock_timestamp() + pg_catalog.make_interval(secs => greatest(1, ceil(
      case
        when jsonb_typeof(m.message -> 'timeout_s') = 'number' and (m.message ->> 'timeout_s')::numeric > 0
          then least((m.message ->> 'timeout_s')::numeric, 2147483647)
        else least(p_default_timeout_s, 2147483647)
      end + least(greatest(p_margin_s, 0), 2147483647)
    ))::double precision)
  where m.msg_id = any(v_ids)
  returning m.msg_id, m.read_ct, m.message,
    -- Both checks are made for a redelivery only (read_ct > 1), in functions of their own:
    -- a first delivery's step run was queued with it, in the same transaction, and the
    -- limit is at least 1. (Probing step_runs in this statement cost ~10%% of a read of 10
    -- messages, even for first deliveries: the probe's relation is opened on every call. A
    -- result for a step run that does not exist is dead-lettered by the write-back.)
    case
      when m.read_ct > 1 and m.read_ct > conveyor.max_action_deliveries() then 'max_deliveries'
      when m.read_ct > 1 and not conveyor.message_awaited(m.msg_id, m.message) then 'step_run_gone'
    end;
end;
$$
$fn$, v_last_read);
end;
$do$;

revoke all on function conveyor.read_actions(integer, numeric, numeric) from public;
grant execute on function conveyor.read_actions(integer, numeric, numeric) to conveyor_service;

-- Archives the runner's messages: pgmq.archive's statement (delete from the queue table,
-- insert into its archive), written once here rather than built per call. The columns
-- copied are those the queue and its archive table share in the installed pgmq.
do $do$
declare
  v_columns text;
begin
  select string_agg(pg_catalog.quote_ident(q.attname), ', ' order by q.attnum) into v_columns
  from pg_catalog.pg_attribute as q
  join pg_catalog.pg_attribute as a
    on a.attrelid = 'pgmq.a_conveyor_actions'::regclass and a.attname = q.attname and a.attnum > 0
    and not a.attisdropped
  where q.attrelid = 'pgmq.q_conveyor_actions'::regclass and q.attnum > 0 and not q.attisdropped;
  execute format($fn$
create or replace function conveyor.archive_actions(p_msg_ids bigint[])
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_count integer;
begin
  with archived as (
    delete from pgmq.q_conveyor_actions where msg_id = any(p_msg_ids)
    returning %1$s
  )
  insert into pgmq.a_conveyor_actions (%1$s)
  select %1$s from archived;
  get diagnostics v_count = row_count;
  return v_count;
end;
$$
$fn$, v_columns);
end;
$do$;

revoke all on function conveyor.archive_actions(bigint[]) from public;

-- Seconds to wait before attempt p_attempt + 1 after attempt p_attempt failed:
-- exponential (initial * 2^(attempt-1)) or fixed (initial), ±20% jitter when the policy
-- says jitter, capped at max; a larger Retry-After from the receiver wins, up to
-- conveyor.max_duration (the exponent is clamped too: no number a policy or a receiver
-- gives overflows the integer, or numeric's range).
create or replace function conveyor.retry_delay_s(
  p_policy jsonb,
  p_attempt integer,
  p_retry_after_s numeric default null
) returns integer
language plpgsql
volatile
set search_path = ''
as $$
declare
  v_initial numeric := extract(epoch from conveyor.parse_duration(coalesce(p_policy ->> 'initial', '30s')));
  v_max numeric := extract(epoch from conveyor.parse_duration(coalesce(p_policy ->> 'max', '1h')));
  v_delay numeric;
begin
  v_delay := case
    when coalesce(p_policy ->> 'backoff', 'exponential') = 'fixed' then v_initial
    -- 2^40 times any initial is past any max a policy can name
    else v_initial * power(2::numeric, least(greatest(p_attempt, 1) - 1, 40))
  end;
  if coalesce((p_policy ->> 'jitter')::boolean, false) then
    v_delay := v_delay * (0.8 + 0.4 * random()::numeric);
  end if;
  v_delay := least(v_delay, v_max);
  return ceil(least(
    greatest(v_delay, coalesce(p_retry_after_s, 0)),
    extract(epoch from conveyor.max_duration()),
    2147483647
  ))::integer;
end;
$$;

revoke all on function conveyor.enqueue_action(bigint, integer) from public;
revoke all on function conveyor.send_actions(bigint[], integer) from public;
revoke all on function conveyor.action_message(conveyor.step_runs, bigint, conveyor.workflow_steps) from public;
revoke all on function conveyor.queue_messages(jsonb[], integer) from public;
grant execute on function conveyor.enqueue_action(bigint, integer) to conveyor_service;
