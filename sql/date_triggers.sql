-- Date-based triggers: "N days after / before <entity>.<date column> [at HH:MM] in the
-- tenant's (or the row's, or a fixed) time zone".
--
-- * Built on capture: the entity's table must be watched. Dispatch hands each batch of
--   events to track_date_triggers, which moves, creates or drops the entity's pending
--   firing (one per workflow and entity) — no nightly full-table scan.
-- * Publishing the trigger scans the table once to schedule the rows that already exist.
-- * fire_date_triggers (from conveyor.tick) starts each due firing once: the firing's
--   primary key is (workflow, entity, date value), so a date that changes back and forth
--   never fires twice for the same value.
-- * Only firings still in the future when scheduled are kept: setting a date whose
--   moment has already passed does not fire late.

-- The instant a firing is due, for a date (or timestamp) value given as JSON text.
create or replace function conveyor.date_trigger_due(
  p_value text,
  p_offset interval,
  p_at time,
  p_timezone text
) returns timestamptz
language plpgsql
stable
set search_path = ''
as $$
declare
  v_local timestamp;
begin
  if p_value is null then
    return null;
  end if;
  -- A bare date is a day in the trigger's zone; a timestamp is an instant.
  if p_value ~ '^\d{4}-\d{2}-\d{2}$' then
    v_local := p_value::date::timestamp;
  else
    v_local := p_value::timestamptz at time zone p_timezone;
  end if;
  v_local := v_local + p_offset;
  if p_at is not null then
    v_local := v_local::date + p_at;
  end if;
  return conveyor.local_to_instant(v_local, p_timezone);
exception when invalid_datetime_format or datetime_field_overflow then
  return null;
end;
$$;

-- The date value a firing belongs to (the same rule as above, without offset or time).
create or replace function conveyor.date_trigger_value(p_value text, p_timezone text)
returns timestamptz
language plpgsql
stable
set search_path = ''
as $$
begin
  if p_value is null then
    return null;
  end if;
  if p_value ~ '^\d{4}-\d{2}-\d{2}$' then
    return conveyor.local_to_instant(p_value::date::timestamp, p_timezone);
  end if;
  return p_value::timestamptz;
exception when invalid_datetime_format or datetime_field_overflow then
  return null;
end;
$$;

-- Pending firings for a set of rows (entity id, row as JSON) of one date trigger.
create or replace function conveyor.date_trigger_candidates(p_workflow_id bigint, p_rows jsonb)
returns table (entity_id text, date_value timestamptz, due_at timestamptz)
language sql
stable
set search_path = ''
as $$
  select r.entity_id, conveyor.date_trigger_value(r.raw, r.zone),
    conveyor.date_trigger_due(r.raw, d.offset_by, d.at_time, r.zone)
  from conveyor.date_triggers as d
  join conveyor.tenants as t on t.tenant_id = d.tenant_id
  cross join lateral (
    select x ->> 'id' as entity_id, x -> 'row' ->> d.date_column as raw,
      coalesce(
        d.timezone,
        case when conveyor.timezone_is_valid(x -> 'row' ->> d.timezone_column)
          then x -> 'row' ->> d.timezone_column end,
        t.timezone
      ) as zone
    from jsonb_array_elements(p_rows) as x
  ) as r
  where d.workflow_id = p_workflow_id;
$$;

-- Keep pending firings in step with captured changes (called by dispatch per batch).
create or replace function conveyor.track_date_triggers(p_event_ids bigint[])
returns integer
language plpgsql
set search_path = ''
as $$
declare
  v_changes jsonb;
  v_count integer := 0;
  t record;
begin
  -- Per date trigger: the newest event of each entity in this batch decides.
  for t in
    select d.workflow_id, jsonb_agg(jsonb_build_object(
        'id', l.entity_id, 'row', case when l.event_type like '%.deleted' then null else l.payload -> 'new' end))
      as changes
    from conveyor.date_triggers as d
    join lateral (
      select distinct on (e.entity_id) e.entity_id, e.event_type, e.payload
      from conveyor.events as e
      where e.event_id = any(p_event_ids) and e.entity_id is not null
        and e.source = d.event_source and e.entity_type = d.event_entity and e.tenant_id = d.tenant_id
      order by e.entity_id, e.event_id desc
    ) as l on true
    group by d.workflow_id
  loop
    v_changes := t.changes;
    -- A pending firing whose date changed, vanished or whose row was deleted is dropped...
    delete from conveyor.date_trigger_firings as f
    using conveyor.date_trigger_candidates(t.workflow_id, v_changes) as c
    where f.workflow_id = t.workflow_id and f.entity_id = c.entity_id and f.fired_at is null
      and f.date_value is distinct from c.date_value;
    -- ...and the new date scheduled, if its moment is still ahead.
    insert into conveyor.date_trigger_firings (workflow_id, entity_id, date_value, tenant_id, due_at)
    select t.workflow_id, c.entity_id, c.date_value, d.tenant_id, c.due_at
    from conveyor.date_trigger_candidates(t.workflow_id, v_changes) as c
    join conveyor.date_triggers as d on d.workflow_id = t.workflow_id
    where c.due_at > now()
    on conflict do nothing;
    v_count := v_count + 1;
  end loop;
  return v_count;
end;
$$;

-- Create or replace a workflow's date trigger from its trigger document and schedule the
-- rows that already exist ({"date": {"entity": "contact", "column": "joined_at",
-- "offset": "30 days", "at": "09:00", "timezone": "Europe/Berlin" | "tenant",
-- "timezone_column": "tz"}}, or null to remove it). Called by publish.
create or replace function conveyor.sync_date_trigger(p_workflow_id bigint, p_date jsonb)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_entity conveyor.entities;
  v_watch conveyor.watched_tables;
  v_tenant_id text;
  v_rows jsonb;
  v_offset interval;
begin
  if p_date is null then
    delete from conveyor.date_triggers where workflow_id = p_workflow_id;
    return;
  end if;
  select w.tenant_id into v_tenant_id from conveyor.workflows as w where w.workflow_id = p_workflow_id;
  select * into v_entity from conveyor.entities as en where en.entity = p_date ->> 'entity';
  select * into v_watch from conveyor.watched_tables as wt where wt.table_name = v_entity.table_name;
  if v_watch.table_name is null then
    raise exception using errcode = '22023',
      message = format('trigger.date.entity: the table of entity "%s" is not watched', p_date ->> 'entity'),
      hint = format('watch it first: `conveyor tables watch %s --module M`', v_entity.table_name);
  end if;
  v_offset := conveyor.parse_duration(pg_catalog.ltrim(p_date ->> 'offset', '-'))
    * case when p_date ->> 'offset' like '-%' then -1 else 1 end;

  insert into conveyor.date_triggers as d (
    workflow_id, tenant_id, entity, date_column, offset_by, at_time, timezone, timezone_column,
    event_source, event_entity
  ) values (
    p_workflow_id, v_tenant_id, v_entity.entity, (p_date ->> 'column')::name, v_offset,
    (p_date ->> 'at')::time, nullif(p_date ->> 'timezone', 'tenant'), (p_date ->> 'timezone_column')::name,
    v_watch.module, v_watch.entity
  )
  on conflict (workflow_id) do update
    set entity = excluded.entity, date_column = excluded.date_column, offset_by = excluded.offset_by,
      at_time = excluded.at_time, timezone = excluded.timezone, timezone_column = excluded.timezone_column,
      event_source = excluded.event_source, event_entity = excluded.event_entity;

  -- Reschedule from the table as it is now: one scan, at publish time only.
  delete from conveyor.date_trigger_firings where workflow_id = p_workflow_id and fired_at is null;
  execute format(
    'select coalesce(jsonb_agg(jsonb_build_object(''id'', t.%I::text, ''row'', to_jsonb(t))), ''[]'')'
    ' from %s as t where t.%I::text = $1 and t.%I is not null',
    v_entity.id_column, v_entity.table_name, v_entity.tenant_column, p_date ->> 'column'
  ) into v_rows using v_tenant_id;
  insert into conveyor.date_trigger_firings (workflow_id, entity_id, date_value, tenant_id, due_at)
  select p_workflow_id, c.entity_id, c.date_value, v_tenant_id, c.due_at
  from conveyor.date_trigger_candidates(p_workflow_id, v_rows) as c
  where c.due_at > now()
  on conflict do nothing;
end;
$$;

-- Start every due firing once. Returns how many were handled.
create or replace function conveyor.fire_date_triggers(
  p_now timestamptz default now(),
  p_limit integer default 1000
) returns integer
language plpgsql
set search_path = ''
as $$
declare
  f record;
  v_execution_id bigint;
  v_count integer := 0;
  v_refusal text;
begin
  -- Each firing starts its own execution: per-row work by nature.
  for f in
    select df.*, d.entity, d.date_column, w.active
    from conveyor.date_trigger_firings as df
    join conveyor.date_triggers as d on d.workflow_id = df.workflow_id
    join conveyor.workflows as w on w.workflow_id = df.workflow_id
    where df.fired_at is null and df.due_at <= p_now
    order by df.due_at
    limit p_limit
    for update of df skip locked
  loop
    v_execution_id := null;
    v_refusal := case when f.active then conveyor.execution_quota_refusal(f.tenant_id) end;
    if v_refusal is not null then
      insert into conveyor.execution_logs (tenant_id, workflow_id, level, message, details)
      values (f.tenant_id, f.workflow_id, 'warning',
        format('date trigger for %s %s started no execution: %s', f.entity, f.entity_id, v_refusal),
        jsonb_build_object('reason', 'executions_per_month', 'entity_id', f.entity_id));
    elsif f.active then
      v_execution_id := conveyor.start_workflow(f.workflow_id, jsonb_build_object(
        'kind', 'date', 'occurred_at', f.due_at, 'depth', 0,
        'entity_type', f.entity, 'entity_id', f.entity_id,
        'payload', jsonb_build_object('entity', f.entity, 'entity_id', f.entity_id,
          'column', f.date_column, 'date', f.date_value, 'due_at', f.due_at)
      ), f.entity, f.entity_id);
    else
      insert into conveyor.execution_logs (tenant_id, workflow_id, level, message, details)
      values (f.tenant_id, f.workflow_id, 'info',
        format('date trigger for %s %s skipped: the workflow is not active', f.entity, f.entity_id),
        jsonb_build_object('reason', 'inactive', 'entity_id', f.entity_id));
    end if;
    update conveyor.date_trigger_firings
    set fired_at = p_now, execution_id = v_execution_id
    where workflow_id = f.workflow_id and entity_id = f.entity_id and date_value = f.date_value;
    v_count := v_count + 1;
  end loop;
  return v_count;
end;
$$;
