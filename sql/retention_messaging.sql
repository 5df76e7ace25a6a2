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
  v_kind record;
  v_result jsonb := '{}';
  v_count integer;
begin
  -- (kind, table, key, time column, what else must hold): rows older than their tenant's days
  for v_kind in
    select * from (values
      ('notifications', 'conveyor.notifications', 'notification_id', 'created_at', 'true'),
      ('notification_deliveries', 'conveyor.notification_deliveries', 'delivery_id', 'finished_at', 'true'),
      ('notification_digests', 'conveyor.notification_digests', 'digest_id', 'created_at', 'x.status <> ''open'''),
      ('email_messages', 'conveyor.email_messages', 'id', 'sent_at', 'true'),
      ('campaign_enrollments', 'conveyor.campaign_enrollments', 'enrollment_id', 'finished_at',
        'x.status not in (''active'', ''paused'')')
    ) as k (kind, table_name, key, at, extra)
  loop
    execute format($q$
      with old as (
        select x.%2$I as key from %1$s as x
        join conveyor.tenant_history_days() as t on t.tenant_id = x.tenant_id
        where x.%3$I < $3 and x.%3$I < $1 - pg_catalog.make_interval(days => t.history_days) and %4$s
        limit $2
        for update of x skip locked
      ),
      gone as (delete from %1$s as x using old where x.%2$I = old.key returning 1)
      select count(*) from gone
    $q$, v_kind.table_name, v_kind.key, v_kind.at, v_kind.extra) into v_count using p_now, p_batch, v_oldest;
    v_result := v_result || jsonb_build_object(v_kind.kind, v_count);
  end loop;

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
