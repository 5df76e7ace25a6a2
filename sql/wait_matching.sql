-- Waits, matched at an event's dispatch (place 2 of the argument at the top of
-- sql/waits.sql): the waits the events a dispatcher just claimed answer are resumed.

-- The answers p_event_ids (events dispatch just claimed, of the tenants p_tenants) give
-- to waits: same tenant, the awaited type or pattern, the "match" values equal as text,
-- occurred at or after the wait's look-back point; for wait_until a captured change of
-- the row, whose condition is then checked on the row. Each waiting execution takes its
-- first answering event (by occurred_at, then id): execution_ids (in id order) and, at
-- the same positions, hits (what conveyor.wait_take records). An event that waits of its
-- type exist for but that answered none of them is logged (reason no_wait_matched), like
-- the reasons an event started nothing. Locks nothing: the caller does.
create or replace function conveyor.wait_answers(
  p_event_ids bigint[],
  p_tenants text[],
  out execution_ids bigint[],
  out hits jsonb[]
)
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_logged bigint;
begin
  with events as (
    select
      ev.event_id, ev.tenant_id, ev.event_type, ev.occurred_at,
      -- conveyor.event_trigger_object and conveyor.event_match_keys, inlined (see dispatch)
      jsonb_build_object(
        'event_id', ev.event_id, 'event_type', ev.event_type, 'source', ev.source,
        'entity_type', ev.entity_type, 'entity_id', ev.entity_id, 'payload', ev.payload,
        'changed_columns', to_jsonb(ev.changed_columns), 'occurred_at', ev.occurred_at, 'depth', ev.depth
      ) as obj,
      array[
        ev.event_type,
        split_part(ev.event_type, '.', 1) || '.' || split_part(ev.event_type, '.', 2) || '.*',
        split_part(ev.event_type, '.', 1) || '.*',
        '*',
        'entity:' || coalesce(ev.entity_type, '')
      ] as keys
    from conveyor.events as ev
    where ev.event_id = any(p_event_ids)
  ),

  -- the correlations waits for these events can have (type or pattern, and match paths):
  -- read from the wait steps of the tenants' workflows, a handful of rows, so that waits
  -- are then found by their key and values (waits_key_idx), not scanned
  shapes as (
    select distinct
      st.tenant_id,
      case when st.kind = 'wait_until' then 'entity:' || (sp.spec ->> 'entity') else sp.spec ->> 'event' end
        as event_key,
      case when st.kind = 'wait_until' then array['entity_id']
        else array(
          select k.k
          from jsonb_object_keys(coalesce(sp.spec -> 'match', '{}')) as k (k)
          order by pg_catalog.convert_to(k.k, 'UTF8')
        )
      end as match_paths
    from conveyor.workflow_steps as st
    cross join lateral (
      select case when st.config ? st.kind then st.config -> st.kind else st.config end as spec
    ) as sp
    where st.tenant_id = any(p_tenants) and st.kind in ('wait_for_event', 'wait_until')
  ),

  -- the waits with an event's key and values; for a wait_until its row
  candidates as (
    select
      ev.event_id, ev.tenant_id, ev.event_type, ev.occurred_at, ev.obj, sh.event_key, w.execution_id, w.since,
      w.entity, w.condition,
      case when w.entity is not null then conveyor.wait_row(w.tenant_id, w.entity, w.entity_id) end as row
    from events as ev
    join shapes as sh on sh.tenant_id = ev.tenant_id and sh.event_key = any(ev.keys)
    left join (
      conveyor.waits as w
      -- only waits still waiting at their step (a cancelled execution's stays until retention)
      join conveyor.executions as x
        on x.execution_id = w.execution_id and x.status = 'waiting' and x.wait_kind = 'event'
        and x.current_step = w.step_id
    )
      on w.tenant_id = ev.tenant_id and w.event_key = sh.event_key and w.match_paths = sh.match_paths
      and w.match_values = array(
        select ev.obj #>> pg_catalog.string_to_array(u.path, '.')
        from unnest(sh.match_paths) with ordinality as u (path, n)
        order by u.n
      )
  ),

  -- and whether the event answers it
  checked as (
    select
      c.event_id, c.tenant_id, c.event_type, c.occurred_at, c.obj, c.event_key, c.execution_id, c.row,
      c.execution_id is not null and c.occurred_at >= c.since
      and (c.entity is null or c.row is not null and coalesce((
        select t.holds from conveyor.try_eval_condition(c.condition, jsonb_build_object('row', c.row)) as t
      ), false)) as answers
    from candidates as c
  ),

  -- the first answering event per execution
  hits as (
    select distinct on (c.execution_id)
      c.execution_id,
      case when c.row is null then jsonb_build_object('event', c.obj)
        else jsonb_build_object('event', c.obj, 'row', c.row) end as hit
    from checked as c
    where c.answers
    order by c.execution_id, c.occurred_at, c.event_id
  ),

  -- an event of a type some workflow waits for that answered no wait (a reply to nothing,
  -- or to a wait that has not begun yet); captured changes checked for wait_until are not
  -- logged (most changes of a row answer nothing)
  logged as (
    insert into conveyor.execution_logs (tenant_id, event_id, level, message, details)
    select u.tenant_id, u.event_id, 'info',
      format('event %s (%s) resumed no execution: no wait for it matched its correlation', u.event_id, u.event_type),
      '{"reason": "no_wait_matched"}'::jsonb
    from (
      select c.event_id, c.tenant_id, c.event_type
      from checked as c
      where c.event_id::text <> all(pg_catalog.string_to_array(
        coalesce(pg_catalog.current_setting('conveyor.events_taken_by_waits', true), ''), ','
      ))
      group by c.event_id, c.tenant_id, c.event_type
      having not bool_or(c.answers) and bool_or(not starts_with(c.event_key, 'entity:'))
    ) as u
    order by u.event_id
    returning 1
  )

  select
    (select array_agg(h.execution_id order by h.execution_id) from hits as h),
    (select array_agg(h.hit order by h.execution_id) from hits as h),
    (select count(*) from logged)
  into execution_ids, hits, v_logged;
end;
$$;

revoke all on function conveyor.wait_answers(bigint[], text[]) from public;

-- Resumes the waits that p_event_ids (events dispatch just claimed) answer (see
-- conveyor.wait_answers): each execution sees its event as {{steps.<id>.output.event}}.
-- Returns how many executions were resumed.
create or replace function conveyor.resume_waiting_for_events(p_event_ids bigint[])
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_ids bigint[];
  v_hits jsonb[];
  v_locked bigint[];
  -- the tenants of these events waits could belong to
  v_tenants text[] := array(
    select distinct ev.tenant_id from conveyor.events as ev where ev.event_id = any(p_event_ids)
  );
begin
  -- most dispatches meet no wait of these tenants: one probe of waits_key_idx says so
  if not exists (select from conveyor.waits as w where w.tenant_id = any(v_tenants)) then
    return 0;
  end if;
  select a.execution_ids, a.hits into v_ids, v_hits from conveyor.wait_answers(p_event_ids, v_tenants) as a;

  if v_ids is null then
    return 0;
  end if;
  -- Lock the answered executions, in id order, waiting for a holder rather than skipping
  -- it: a holder that does not resume the execution (a confirmation, a pause) must not
  -- make this event lost. An execution no longer waiting is left alone.
  v_locked := array(
    select x.execution_id
    from conveyor.executions as x
    where x.execution_id = any(v_ids) and x.status = 'waiting' and x.wait_kind = 'event'
    order by x.execution_id
    for update
  );
  return conveyor.wait_take(
    v_locked,
    array(select h from unnest(v_ids, v_hits) as u (id, h) where u.id = any(v_locked) order by u.id),
    now()
  );
end;
$$;

revoke all on function conveyor.resume_waiting_for_events(bigint[]) from public;
grant execute on function conveyor.resume_waiting_for_events(bigint[]) to conveyor_service;
