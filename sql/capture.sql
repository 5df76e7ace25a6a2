-- Capture: how events enter conveyor.events.
--
-- * conveyor.emit(...) — a platform (or a person in psql) emits an event explicitly.
-- * conveyor.watch(table, module, ...) — a platform table's inserts, updates and deletes
--   become `<module>.<entity>.created | updated | deleted` events, captured by
--   statement-level AFTER triggers with transition tables: ONE set-based insert into
--   conveyor.events per platform statement, however many rows it changed; no per-row
--   trigger, no subscription matching on the platform's write path.
--
-- Both wake the runners with pg_notify('conveyor_wakeup', 'event') once per statement
-- (a constant payload, so Postgres folds repeated notifications of one transaction into
-- one). Events exist only if the platform's transaction commits: the triggers run in it.
--
-- Captured events look like this (table crm.contacts watched as module 'crm', entity
-- 'contact', tenant column tenant_id, id column id):
--   event_type   crm.contact.created | crm.contact.updated | crm.contact.deleted
--   tenant_id    the row's tenant column as text; entity_id: the row's id column as text
--   entity_type  the entity ('contact'); source: the module ('crm'); depth 0
--   payload      insert {"new": row}, update {"old": row, "new": row, "changed": [col, ...]},
--                delete {"old": row}; rows as to_jsonb(row) (column name -> value)
--   changed_columns  for updates, the changed columns in table order (null otherwise)
-- Rules of the write path:
--   * an update that leaves a row unchanged (every column equal) captures nothing for it;
--   * old and new rows are paired by the id and tenant columns; an update that changes
--     a row's id is captured as `deleted` of the old id and `created` of the new id, and
--     one that moves a row to another tenant as `deleted` for the old tenant and
--     `created` for the new one (a tenant never sees another tenant's old values);
--   * rows whose tenant column is null, or names a tenant that conveyor.tenants does not
--     know, are not captured (a platform may enable automation tenant by tenant; the
--     platform's write never fails because of Conveyor);
--   * TRUNCATE is not captured.

-- ---------------------------------------------------------------------------------
-- emit
-- ---------------------------------------------------------------------------------

-- Emits one event for p_tenant_id and returns its id. With a dedupe key, a second emit
-- of the same (tenant, dedupe key) inserts nothing and returns the id of the event that
-- is already there. Callable by the application role (it runs as its owner, after
-- conveyor.require_tenant has checked the caller may act for the tenant). Depth 0:
-- events emitted by workflow steps are written by the interpreter with their depth.
create or replace function conveyor.emit(
  p_tenant_id text,
  p_event_type text,
  p_payload jsonb default '{}',
  p_entity_type text default null,
  p_entity_id text default null,
  p_dedupe_key text default null,
  p_source text default null
) returns bigint
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_event_id bigint;
begin
  perform conveyor.require_tenant(p_tenant_id);

  if p_event_type is null or p_event_type !~ '^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$' then
    raise exception using
      errcode = '22023',
      message = format('invalid event type %L', p_event_type),
      detail = 'An event type is module.entity.action: three lowercase names of letters, digits and _, '
      || 'each starting with a letter.',
      hint = 'For example crm.contact.created or booking.appointment.cancelled.';
  end if;
  if p_payload is null or jsonb_typeof(p_payload) <> 'object' then
    raise exception using
      errcode = '22023',
      message = format('event %s: the payload must be a JSON object, not %s', p_event_type,
        coalesce(jsonb_typeof(p_payload), 'null')),
      hint = 'Wrap the value in an object, e.g. {"value": ...}.';
  end if;
  if not exists (select from conveyor.tenants as t where t.tenant_id = p_tenant_id) then
    raise exception using
      errcode = '22023',
      message = format('event %s: unknown tenant %L', p_event_type, p_tenant_id),
      hint = 'Create the tenant first: conveyor.create_tenant(id, name, timezone).';
  end if;

  insert into conveyor.events as e (
    tenant_id, event_type, source, entity_type, entity_id, payload, dedupe_key, depth
  )
  values (p_tenant_id, p_event_type, p_source, p_entity_type, p_entity_id, p_payload, p_dedupe_key, 0)
  on conflict (tenant_id, dedupe_key) where dedupe_key is not null do nothing
  returning e.event_id into v_event_id;

  if v_event_id is null then
    -- A duplicate: the first event with this key wins (it is committed: on conflict
    -- waited for its transaction).
    select e.event_id into v_event_id
    from conveyor.events as e
    where e.tenant_id = p_tenant_id and e.dedupe_key = p_dedupe_key;
  else
    perform pg_notify('conveyor_wakeup', 'event');
  end if;
  return v_event_id;
end;
$$;

-- ---------------------------------------------------------------------------------
-- The capture triggers (installed by conveyor.watch; arguments: the event type prefix
-- '<module>.<entity>', the tenant column, the id column). Security definer: the
-- platform's role writes its own table; the events are written as Conveyor's owner.
-- plpgsql compiles a trigger function per trigger, so each watched table gets its
-- own cached plans for these static statements.
-- Two planner fences, both measured (bench/capture_overhead.py):
--   * `offset 0` on the subquery that calls to_jsonb(row) keeps it from being flattened
--     into the outer query, where to_jsonb would run once per expression reading it
--     (4x per row);
--   * `offset 0` inside the tenants `exists` keeps it a per-row primary-key probe.
--     As a semi-join, the cached plan (estimated from whichever statement planned it
--     first) may hash the whole tenants table on every single-row statement.
-- ---------------------------------------------------------------------------------

create or replace function conveyor.capture_insert() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_prefix text := tg_argv[0];
  v_tenant_column text := tg_argv[1];
  v_id_column text := tg_argv[2];
  v_count bigint;
begin
  insert into conveyor.events (tenant_id, event_type, source, entity_type, entity_id, payload)
  select
    r.j ->> v_tenant_column,
    v_prefix || '.created',
    split_part(v_prefix, '.', 1),
    split_part(v_prefix, '.', 2),
    r.j ->> v_id_column,
    jsonb_build_object('new', r.j)
  from (select to_jsonb(n) as j from conveyor_new as n offset 0) as r
  where exists (select from conveyor.tenants as t where t.tenant_id = r.j ->> v_tenant_column offset 0);

  get diagnostics v_count = row_count;
  if v_count > 0 then
    perform pg_notify('conveyor_wakeup', 'event');
  end if;
  return null;
end;
$$;

create or replace function conveyor.capture_update() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_prefix text := tg_argv[0];
  v_tenant_column text := tg_argv[1];
  v_id_column text := tg_argv[2];
  v_columns text[];
  v_count bigint;
begin
  -- The table's columns in table order: the order of the changed list.
  v_columns := array(
    select a.attname::text
    from pg_catalog.pg_attribute as a
    where a.attrelid = tg_relid and a.attnum > 0 and not a.attisdropped
    order by a.attnum
  );

  insert into conveyor.events (
    tenant_id, event_type, source, entity_type, entity_id, payload, changed_columns
  )
  select
    coalesce(p.new_row, p.old_row) ->> v_tenant_column,
    v_prefix || case
      when p.old_row is null then '.created'
      when p.new_row is null then '.deleted'
      else '.updated'
    end,
    split_part(v_prefix, '.', 1),
    split_part(v_prefix, '.', 2),
    coalesce(p.new_row, p.old_row) ->> v_id_column,
    case
      when p.old_row is null then jsonb_build_object('new', p.new_row)
      when p.new_row is null then jsonb_build_object('old', p.old_row)
      else jsonb_build_object('old', p.old_row, 'new', p.new_row, 'changed', to_jsonb(c.changed))
    end,
    case when p.old_row is not null and p.new_row is not null then c.changed end
  from (
    select n.j as new_row, o.j as old_row
    from (select to_jsonb(x) as j from conveyor_new as x offset 0) as n
    full join (select to_jsonb(x) as j from conveyor_old as x offset 0) as o
      on (n.j -> v_id_column) = (o.j -> v_id_column) and (n.j -> v_tenant_column) = (o.j -> v_tenant_column)
    offset 0
  ) as p
  cross join lateral (
    select array_agg(u.col order by u.ord) as changed
    from unnest(v_columns) with ordinality as u (col, ord)
    where (p.new_row -> u.col) is distinct from (p.old_row -> u.col)
  ) as c
  where
    c.changed is not null
    and exists (
      select from conveyor.tenants as t
      where t.tenant_id = coalesce(p.new_row, p.old_row) ->> v_tenant_column
      offset 0
    );

  get diagnostics v_count = row_count;
  if v_count > 0 then
    perform pg_notify('conveyor_wakeup', 'event');
  end if;
  return null;
end;
$$;

create or replace function conveyor.capture_delete() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_prefix text := tg_argv[0];
  v_tenant_column text := tg_argv[1];
  v_id_column text := tg_argv[2];
  v_count bigint;
begin
  insert into conveyor.events (tenant_id, event_type, source, entity_type, entity_id, payload)
  select
    r.j ->> v_tenant_column,
    v_prefix || '.deleted',
    split_part(v_prefix, '.', 1),
    split_part(v_prefix, '.', 2),
    r.j ->> v_id_column,
    jsonb_build_object('old', r.j)
  from (select to_jsonb(o) as j from conveyor_old as o offset 0) as r
  where exists (select from conveyor.tenants as t where t.tenant_id = r.j ->> v_tenant_column offset 0);

  get diagnostics v_count = row_count;
  if v_count > 0 then
    perform pg_notify('conveyor_wakeup', 'event');
  end if;
  return null;
end;
$$;

-- ---------------------------------------------------------------------------------
-- watch / unwatch
-- ---------------------------------------------------------------------------------

-- Starts capturing p_table's changes as `<p_module>.<entity>.created|updated|deleted`
-- events. The entity defaults to the table's name as it is (table crm.contacts →
-- crm.contacts.created); pass p_entity for a singular name. The tenant and id columns
-- must exist (any type: their values become text). Watching a watched table again
-- replaces its triggers and its conveyor.watched_tables row.
-- Administration: run it as the role that runs `conveyor migrate` (it creates triggers
-- on the platform's table and writes conveyor.watched_tables).
create or replace function conveyor.watch(
  p_table regclass,
  p_module text,
  p_entity text default null,
  p_tenant_column name default 'tenant_id',
  p_id_column name default 'id'
) returns void
language plpgsql
set search_path = ''
as $$
declare
  v_relkind "char";
  v_relname name;
  v_entity text;
  v_prefix text;
  v_missing text;
begin
  if p_table is null then
    raise exception using errcode = '22023', message = 'watch: the table is required';
  end if;
  select c.relkind, c.relname into v_relkind, v_relname
  from pg_catalog.pg_class as c
  where c.oid = p_table;
  if v_relkind is null or v_relkind not in ('r', 'p') then
    raise exception using
      errcode = '22023',
      message = format('watch %s: only tables can be watched (this is not a table)', p_table);
  end if;

  if p_module is null or p_module !~ '^[a-z][a-z0-9_]*$' then
    raise exception using
      errcode = '22023',
      message = format('watch %s: invalid module %L', p_table, p_module),
      hint = 'A module is a lowercase name of letters, digits and _, starting with a letter (crm, booking).';
  end if;
  v_entity := coalesce(p_entity, v_relname::text);
  if v_entity !~ '^[a-z][a-z0-9_]*$' then
    raise exception using
      errcode = '22023',
      message = format('watch %s: invalid entity %L', p_table, v_entity),
      detail = case when p_entity is null then 'The entity defaults to the table''s name.' end,
      hint = 'Pass p_entity: a lowercase name of letters, digits and _, starting with a letter (contact).';
  end if;

  select string_agg(format('%s (%s column)', m.col, m.role), ', ' order by m.role desc)
  into v_missing
  from (values (p_tenant_column, 'tenant'), (p_id_column, 'id')) as m (col, role)
  where not exists (
    select from pg_catalog.pg_attribute as a
    where a.attrelid = p_table and a.attname = m.col and a.attnum > 0 and not a.attisdropped
  );
  if v_missing is not null then
    raise exception using
      errcode = '42703',
      message = format('watch %s: no such column: %s', p_table, v_missing),
      hint = 'Pass p_tenant_column / p_id_column naming the table''s tenant and id columns.';
  end if;

  v_prefix := p_module || '.' || v_entity;
  perform conveyor.unwatch(p_table);
  execute format(
    'create trigger conveyor_capture_insert after insert on %s '
    'referencing new table as conveyor_new for each statement '
    'execute function conveyor.capture_insert(%L, %L, %L)',
    p_table, v_prefix, p_tenant_column, p_id_column
  );
  execute format(
    'create trigger conveyor_capture_update after update on %s '
    'referencing old table as conveyor_old new table as conveyor_new for each statement '
    'execute function conveyor.capture_update(%L, %L, %L)',
    p_table, v_prefix, p_tenant_column, p_id_column
  );
  execute format(
    'create trigger conveyor_capture_delete after delete on %s '
    'referencing old table as conveyor_old for each statement '
    'execute function conveyor.capture_delete(%L, %L, %L)',
    p_table, v_prefix, p_tenant_column, p_id_column
  );
  insert into conveyor.watched_tables (table_name, module, entity, tenant_column, id_column)
  values (p_table, p_module, v_entity, p_tenant_column, p_id_column);
end;
$$;

-- Stops capturing p_table: drops its capture triggers and its watched_tables row.
-- Returns whether the table was watched.
create or replace function conveyor.unwatch(p_table regclass) returns boolean
language plpgsql
set search_path = ''
as $$
declare
  v_trigger text;
  v_removed bigint;
begin
  foreach v_trigger in array array['conveyor_capture_insert', 'conveyor_capture_update', 'conveyor_capture_delete']
  loop
    execute format('drop trigger if exists %I on %s', v_trigger, p_table);
  end loop;
  delete from conveyor.watched_tables as w where w.table_name = p_table;
  get diagnostics v_removed = row_count;
  return v_removed > 0;
end;
$$;

revoke execute on function conveyor.emit(text, text, jsonb, text, text, text, text) from public;
grant execute on function conveyor.emit(text, text, jsonb, text, text, text, text)
to conveyor_app, conveyor_service;
revoke execute on function conveyor.capture_insert(), conveyor.capture_update(),
conveyor.capture_delete() from public;
revoke execute on function conveyor.watch(regclass, text, text, name, name),
conveyor.unwatch(regclass) from public;
