-- Campaign counters from delivery tracking (conveyor.email_messages, migration 0034): a
-- statement trigger adds each statement's transitions of campaign mail (tags campaign_id,
-- enrollment_id, step, variant) to conveyor.campaign_stats (campaign, step, variant rows)
-- and to the enrollment's own counters, in the transaction of the event, and emits
-- campaign.enrollment.halted for a reply (when the step says stop_on_reply, the default), a
-- bounce, a complaint or an unsubscribe (unless stop_on says otherwise): the enrollment's
-- wait for a halt (sql/campaign_documents.sql) resumes on it and ends the enrollment.

create or replace function conveyor.campaign_count_messages() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_halt record;
begin
  with changes as (
    select n.tenant_id, (n.tags ->> 'campaign_id')::bigint as campaign_id, (n.tags ->> 'enrollment_id')::bigint
        as enrollment_id, coalesce(n.tags ->> 'step', '') as step_key, coalesce(n.tags ->> 'variant', '') as variant,
      (o.id is null)::integer as sent,
      (n.status = 'delivered' and o.status is distinct from 'delivered')::integer as delivered,
      (n.opened_count > 0 and coalesce(o.opened_count, 0) = 0)::integer as opened,
      (n.clicked_count > 0 and coalesce(o.clicked_count, 0) = 0)::integer as clicked,
      (n.replied_at is not null and o.replied_at is null)::integer as replied,
      (n.status = 'bounced' and o.status is distinct from 'bounced')::integer as bounced,
      (n.status = 'complained' and o.status is distinct from 'complained')::integer as complained,
      (n.unsubscribed_at is not null and o.unsubscribed_at is null)::integer as unsubscribed
    from new_rows as n
    left join old_rows as o on o.id = n.id
    where n.tags ->> 'campaign_id' ~ '^[0-9]{1,18}$' and coalesce(n.tags ->> 'enrollment_id', '0') ~ '^[0-9]{1,18}$'
  ),
  levels as (
    select c.tenant_id, c.campaign_id, l.step_key, l.variant, c.sent, c.delivered, c.opened, c.clicked, c.replied,
      c.bounced, c.complained, c.unsubscribed
    from changes as c
    -- (distinct: a message without a variant counts once at its step)
    cross join lateral (select distinct v.step_key, v.variant
      from (values ('', ''), (c.step_key, ''), (c.step_key, c.variant)) as v (step_key, variant)) as l
  ),
  totals as (
    select l.tenant_id, l.campaign_id, l.step_key, l.variant, sum(l.sent) as sent, sum(l.delivered) as delivered,
      sum(l.opened) as opened, sum(l.clicked) as clicked, sum(l.replied) as replied, sum(l.bounced) as bounced,
      sum(l.complained) as complained, sum(l.unsubscribed) as unsubscribed
    from levels as l
    group by 1, 2, 3, 4
  ),
  counted as (
    insert into conveyor.campaign_stats as s (tenant_id, campaign_id, step_key, variant, sent, delivered, opened,
      clicked, replied, bounced, complained, unsubscribed)
    select t.* from totals as t
    join conveyor.campaigns as k on k.campaign_id = t.campaign_id and k.tenant_id = t.tenant_id
    order by t.campaign_id, t.step_key, t.variant
    on conflict (campaign_id, step_key, variant) do update set
      sent = s.sent + excluded.sent, delivered = s.delivered + excluded.delivered, opened = s.opened + excluded.opened,
      clicked = s.clicked + excluded.clicked, replied = s.replied + excluded.replied,
      bounced = s.bounced + excluded.bounced, complained = s.complained + excluded.complained,
      unsubscribed = s.unsubscribed + excluded.unsubscribed
    returning 1
  )
  update conveyor.campaign_enrollments as e set
    sent = e.sent + c.sent, delivered = e.delivered + c.delivered, opened = e.opened + c.opened,
    clicked = e.clicked + c.clicked, replied = e.replied + c.replied, bounced = e.bounced + c.bounced,
    unsubscribed = e.unsubscribed + c.unsubscribed
  from (
    select c.enrollment_id, c.tenant_id, sum(c.sent) as sent, sum(c.delivered) as delivered, sum(c.opened) as opened,
      sum(c.clicked) as clicked, sum(c.replied) as replied, sum(c.bounced) as bounced,
      sum(c.unsubscribed) as unsubscribed
    from changes as c group by 1, 2
  ) as c
  where e.enrollment_id = c.enrollment_id and e.tenant_id = c.tenant_id and (select count(*) from counted) >= 0;

  -- A/B: campaigns with a winner rule whose variants' counters moved decide now
  perform conveyor.campaign_decide_winners(c.campaign_id)
  from (select distinct (n.tags ->> 'campaign_id')::bigint as campaign_id from new_rows as n
        where n.tags ->> 'campaign_id' ~ '^[0-9]{1,18}$' and coalesce(n.tags ->> 'variant', '') <> '') as c
  order by c.campaign_id;

  if tg_op = 'UPDATE' then
    for v_halt in
      select n.tenant_id, e.enrollment_id, n.message_id, n.tags ->> 'step' as step,
        case
          when n.status = 'bounced' and o.status is distinct from 'bounced' then 'bounced'
          when n.status = 'complained' and o.status is distinct from 'complained' then 'complained'
          when n.unsubscribed_at is not null and o.unsubscribed_at is null then 'unsubscribed'
          when n.replied_at is not null and o.replied_at is null then 'replied'
        end as reason,
        v.document as doc
      from new_rows as n
      join old_rows as o on o.id = n.id
      join conveyor.campaign_enrollments as e
        on e.enrollment_id::text = n.tags ->> 'enrollment_id' and e.tenant_id = n.tenant_id
      join conveyor.campaign_versions as v on v.campaign_id = e.campaign_id and v.version = e.version
      where n.tags ->> 'enrollment_id' ~ '^[0-9]{1,18}$' and e.status in ('active', 'paused')
      order by e.enrollment_id
    loop
      continue when v_halt.reason is null;
      continue when v_halt.reason = 'replied' and not coalesce((
        select (s.s ->> 'stop_on_reply')::boolean from jsonb_array_elements(v_halt.doc -> 'steps') as s (s)
        where s.s ->> 'id' = v_halt.step), true);
      continue when v_halt.reason in ('bounced', 'complained', 'unsubscribed') and not coalesce(
        (v_halt.doc -> 'stop_on' ->> case v_halt.reason when 'bounced' then 'bounce' when 'complained' then 'complaint'
          else 'unsubscribe' end)::boolean, true);
      perform conveyor.emit(v_halt.tenant_id, 'campaign.enrollment.halted',
        jsonb_build_object('reason', v_halt.reason, 'message_id', v_halt.message_id, 'step', v_halt.step),
        'campaign_enrollment', v_halt.enrollment_id::text, null, 'campaigns');
    end loop;
  end if;
  return null;
end;
$$;

-- A sent message: an insert, counted per campaign, step and variant and on its enrollment.
create or replace function conveyor.campaign_count_sent() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  insert into conveyor.campaign_stats as s (tenant_id, campaign_id, step_key, variant, sent)
  select n.tenant_id, (n.tags ->> 'campaign_id')::bigint, l.step_key, l.variant, count(*)
  from new_rows as n
  cross join lateral (select distinct v.step_key, v.variant from (values ('', ''), (coalesce(n.tags ->> 'step', ''), ''),
    (coalesce(n.tags ->> 'step', ''), coalesce(n.tags ->> 'variant', ''))) as v (step_key, variant)) as l
  join conveyor.campaigns as k on k.campaign_id::text = n.tags ->> 'campaign_id' and k.tenant_id = n.tenant_id
  where n.tags ->> 'campaign_id' ~ '^[0-9]{1,18}$'
  group by 1, 2, 3, 4
  order by 2, 3, 4
  on conflict (campaign_id, step_key, variant) do update set sent = s.sent + excluded.sent;
  update conveyor.campaign_enrollments as e set sent = e.sent + c.sent
  from (select (n.tags ->> 'enrollment_id')::bigint as enrollment_id, n.tenant_id, count(*) as sent
        from new_rows as n where n.tags ->> 'enrollment_id' ~ '^[0-9]{1,18}$' group by 1, 2) as c
  where e.enrollment_id = c.enrollment_id and e.tenant_id = c.tenant_id;
  return null;
end;
$$;

-- The triggers exist once delivery tracking does (migration 0034); sql/ is re-applied after
-- every migration, so they appear with it.
do $$
begin
  if to_regclass('conveyor.email_messages') is not null then
    create or replace trigger email_messages_campaign_insert after insert on conveyor.email_messages
    referencing new table as new_rows
    for each statement execute function conveyor.campaign_count_sent();
    create or replace trigger email_messages_campaign_update after update on conveyor.email_messages
    referencing old table as old_rows new table as new_rows
    for each statement execute function conveyor.campaign_count_messages();
  end if;
end;
$$;
