-- Retention of messaging history, called by conveyor.prune_history (sql/maintenance.sql)
-- with its clock and batch: in-app notifications, their email / SMS deliveries and
-- digests, tracked email messages (their events go with them), finished campaign
-- enrollments — each after its tenant's history days — and campaign send-slot counts of
-- minutes more than a day past (a reservation never looks back). At most p_batch rows per
-- kind per call. The campaigns' counters (conveyor.campaign_stats) are kept: they are
-- totals, not history.
create or replace function conveyor.prune_messaging_history(p_now timestamptz, p_batch integer)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  -- the earliest cutoff any tenant has bounds each index range read
  v_oldest timestamptz := p_now - pg_catalog.make_interval(days => coalesce(
    (select min(t.history_days) from conveyor.tenant_history_days() as t), 30));
  v_result jsonb := '{}';
  v_count integer;
begin
  with old as (
    select n.notification_id from conveyor.notifications as n
    join conveyor.tenant_history_days() as t on t.tenant_id = n.tenant_id
    where n.created_at < v_oldest and n.created_at < p_now - pg_catalog.make_interval(days => t.history_days)
    limit p_batch
  ),
  gone as (delete from conveyor.notifications as n using old where n.notification_id = old.notification_id returning 1)
  select count(*) into v_count from gone;
  v_result := v_result || jsonb_build_object('notifications', v_count);

  with old as (
    select d.delivery_id from conveyor.notification_deliveries as d
    join conveyor.tenant_history_days() as t on t.tenant_id = d.tenant_id
    where d.finished_at < v_oldest and d.finished_at < p_now - pg_catalog.make_interval(days => t.history_days)
    limit p_batch
  ),
  gone as (
    delete from conveyor.notification_deliveries as d using old where d.delivery_id = old.delivery_id returning 1
  )
  select count(*) into v_count from gone;
  v_result := v_result || jsonb_build_object('notification_deliveries', v_count);

  with old as (
    select g.digest_id from conveyor.notification_digests as g
    join conveyor.tenant_history_days() as t on t.tenant_id = g.tenant_id
    where g.status <> 'open' and g.created_at < v_oldest
      and g.created_at < p_now - pg_catalog.make_interval(days => t.history_days)
    limit p_batch
  ),
  gone as (delete from conveyor.notification_digests as g using old where g.digest_id = old.digest_id returning 1)
  select count(*) into v_count from gone;
  v_result := v_result || jsonb_build_object('notification_digests', v_count);

  with old as (
    select m.id from conveyor.email_messages as m
    join conveyor.tenant_history_days() as t on t.tenant_id = m.tenant_id
    where m.sent_at < v_oldest and m.sent_at < p_now - pg_catalog.make_interval(days => t.history_days)
    limit p_batch
    for update of m skip locked
  ),
  gone as (delete from conveyor.email_messages as m using old where m.id = old.id returning 1)
  select count(*) into v_count from gone;
  v_result := v_result || jsonb_build_object('email_messages', v_count);

  with old as (
    select e.enrollment_id from conveyor.campaign_enrollments as e
    join conveyor.tenant_history_days() as t on t.tenant_id = e.tenant_id
    where e.finished_at < v_oldest and e.finished_at < p_now - pg_catalog.make_interval(days => t.history_days)
      and e.status not in ('active', 'paused')
    limit p_batch
    for update of e skip locked
  ),
  gone as (
    delete from conveyor.campaign_enrollments as e using old where e.enrollment_id = old.enrollment_id returning 1
  )
  select count(*) into v_count from gone;
  v_result := v_result || jsonb_build_object('campaign_enrollments', v_count);

  with old as (
    select s.tenant_id, s.key, s.minute from conveyor.campaign_send_slots as s
    where s.minute < p_now - interval '1 day'
    limit p_batch
  ),
  gone as (
    delete from conveyor.campaign_send_slots as s using old
    where (s.tenant_id, s.key, s.minute) = (old.tenant_id, old.key, old.minute)
    returning 1
  )
  select count(*) into v_count from gone;
  return v_result || jsonb_build_object('campaign_send_slots', v_count);
end;
$$;

revoke all on function conveyor.prune_messaging_history(timestamptz, integer) from public;
