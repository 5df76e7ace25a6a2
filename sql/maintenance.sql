-- Time-driven maintenance: execution timeouts, the stalled-action safety net, retention.
-- Run by conveyor.tick() (timeouts) and by pg_cron jobs (see cron_jobs.sql); each call
-- does a bounded amount of work so no call holds locks for long.

-- Executions past their timeout become timed_out; their queued actions are withdrawn
-- from the queue (a runner already performing one gets its write-back ignored).
create or replace function conveyor.expire_timeouts(
  p_now timestamptz default now(),
  p_limit integer default 1000
) returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_ids bigint[];
  v_id bigint;
begin
  select array_agg(x.execution_id order by x.execution_id) into v_ids
  from (
    select e.execution_id from conveyor.executions as e
    where e.status in ('pending', 'running', 'waiting') and e.timeout_at <= p_now
    order by e.timeout_at
    limit p_limit
    for update skip locked
  ) as x;
  if v_ids is null then
    return 0;
  end if;

  -- abort_execution withdraws open actions (their messages archived, step runs skipped)
  -- and does the final bookkeeping (stats shard, log line), as cancellation does.
  foreach v_id in array v_ids loop
    perform conveyor.abort_execution(v_id, 'timed_out', (
      select jsonb_build_object('message', format('timed out after %s (at step "%s")',
        e.timeout_at - e.created_at, e.current_step), 'step', e.current_step)
      from conveyor.executions as e where e.execution_id = v_id
    ));
  end loop;
  return pg_catalog.cardinality(v_ids);
end;
$$;

-- Safety net: a queued action whose message is no longer in the queue (deleted by hand,
-- or lost to a bug) is sent again with the same idempotency key. Runner crashes need no
-- help: pgmq makes a message visible again when its visibility timeout passes.
create or replace function conveyor.recover_stalled_actions(p_limit integer default 1000)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_ids bigint[];
begin
  select pg_catalog.array_agg(c.step_run_id order by c.step_run_id) into v_ids
  from (
    -- from the executions waiting for an action (executions_waiting_action_idx)
    select r.step_run_id from conveyor.executions as e
    join conveyor.step_runs as r on r.execution_id = e.execution_id
    where e.status = 'waiting' and e.wait_kind = 'action'
      and r.status = 'queued'
      and r.started_at < now() - interval '1 minute'
      and not exists (select from pgmq.q_conveyor_actions as q where q.msg_id = r.msg_id)
      -- a dead-lettered message is not lost: it waits for an operator (requeue_dead_letter)
      and not exists (select from conveyor.dead_letters as d where d.step_run_id = r.step_run_id)
    order by r.step_run_id
    limit p_limit
    for update of r skip locked
  ) as c;
  if v_ids is null then
    return 0;
  end if;
  -- one send for all of them (new messages, same idempotency keys), one log line each
  perform conveyor.send_actions(v_ids, 0);
  insert into conveyor.execution_logs (tenant_id, execution_id, step_id, level, message, details)
  select r.tenant_id, r.execution_id, r.step_id, 'warning',
    format('action of step "%s" had no queue message; sent again', r.step_id),
    jsonb_build_object('reason', 'requeued', 'step_run_id', r.step_run_id)
  from conveyor.step_runs as r
  where r.step_run_id = any(v_ids)
  order by r.step_run_id;
  return pg_catalog.cardinality(v_ids);
end;
$$;

-- Deletes history older than each tenant's retention_days, or its plan's history_days when
-- that is less (conveyor.tenant_history_days, sql/plans.sql), at most p_batch rows per kind
-- per call (pg_cron calls it every five minutes, so a backlog drains in small steps).
create or replace function conveyor.prune_history(
  p_now timestamptz default now(),
  p_batch integer default 5000
) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_executions integer;
  v_logs integer;
  v_events integer;
  v_deliveries integer;
  v_archive integer;
  v_dead integer;
begin
  -- Step runs go with their execution in the same statement (no foreign key does it: see
  -- migrations/0012); attached log lines by their key's on delete cascade.
  with old as (
    select e.execution_id from conveyor.executions as e
    join conveyor.tenant_history_days() as t on t.tenant_id = e.tenant_id
    where e.finished_at < p_now - pg_catalog.make_interval(days => t.history_days)
    limit p_batch
    for update of e skip locked
  ),
  runs as (delete from conveyor.step_runs as r using old where r.execution_id = old.execution_id),
  gone as (delete from conveyor.executions as e using old where e.execution_id = old.execution_id returning 1)
  select count(*) into v_executions from gone;

  with old as (
    select l.log_id from conveyor.execution_logs as l
    join conveyor.tenant_history_days() as t on t.tenant_id = l.tenant_id
    where l.execution_id is null and l.logged_at < p_now - pg_catalog.make_interval(days => t.history_days)
    limit p_batch
  ),
  gone as (delete from conveyor.execution_logs as l using old where l.log_id = old.log_id returning 1)
  select count(*) into v_logs from gone;

  with old as (
    select ev.event_id from conveyor.events as ev
    join conveyor.tenant_history_days() as t on t.tenant_id = ev.tenant_id
    where ev.dispatched_at < p_now - pg_catalog.make_interval(days => t.history_days)
    limit p_batch
    for update of ev skip locked
  ),
  gone as (delete from conveyor.events as ev using old where ev.event_id = old.event_id returning 1)
  select count(*) into v_events from gone;

  with old as (
    select d.endpoint_id, d.delivery_id from conveyor.webhook_deliveries as d
    join conveyor.tenant_history_days() as t on t.tenant_id = d.tenant_id
    where d.received_at < p_now - pg_catalog.make_interval(days => t.history_days)
    limit p_batch
  ),
  gone as (
    delete from conveyor.webhook_deliveries as d using old
    where (d.endpoint_id, d.delivery_id) = (old.endpoint_id, old.delivery_id)
    returning 1
  )
  select count(*) into v_deliveries from gone;

  -- Archived action messages carry their tenant in the message.
  with old as (
    select a.msg_id from pgmq.a_conveyor_actions as a
    left join conveyor.tenant_history_days() as t on t.tenant_id = a.message ->> 'tenant_id'
    where a.archived_at < p_now - pg_catalog.make_interval(days => coalesce(t.history_days, 30))
    limit p_batch
  ),
  gone as (delete from pgmq.a_conveyor_actions as a using old where a.msg_id = old.msg_id returning 1)
  select count(*) into v_archive from gone;

  -- Dead letters an operator did not requeue; those naming no tenant after 30 days.
  with old as (
    select d.dead_letter_id from conveyor.dead_letters as d
    left join conveyor.tenant_history_days() as t on t.tenant_id = d.tenant_id
    where d.dead_at < p_now - pg_catalog.make_interval(days => coalesce(t.history_days, 30))
    limit p_batch
  ),
  gone as (delete from conveyor.dead_letters as d using old where d.dead_letter_id = old.dead_letter_id returning 1)
  select count(*) into v_dead from gone;

  return jsonb_build_object(
    'executions', v_executions, 'logs', v_logs, 'events', v_events,
    'webhook_deliveries', v_deliveries, 'archived_messages', v_archive, 'dead_letters', v_dead,
    'budgets', conveyor.prune_budgets(p_now),
    'usage', conveyor.prune_usage(p_now)
  ) || conveyor.prune_messaging_history(p_now, p_batch);
end;
$$;

-- Operators and runners only (the application role must not run maintenance).
revoke all on function conveyor.expire_timeouts(timestamptz, integer) from public;
revoke all on function conveyor.recover_stalled_actions(integer) from public;
revoke all on function conveyor.prune_history(timestamptz, integer) from public;
grant execute on function conveyor.expire_timeouts(timestamptz, integer) to conveyor_service;
grant execute on function conveyor.recover_stalled_actions(integer) to conveyor_service;
grant execute on function conveyor.prune_history(timestamptz, integer) to conveyor_service;
