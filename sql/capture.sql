-- Capture: how events enter conveyor.events.
--
-- * conveyor.emit(...) — a platform (or a person in psql) emits an event explicitly.
-- * conveyor.watch(table, module, ...) — a platform table's inserts, updates and deletes
--   become `<module>.<entity>.created | updated | deleted` events, captured by
--   statement-level AFTER triggers with transition tables: ONE set-based copy of the
--   changed rows into the table's capture log per platform statement, however many rows
--   it changed; no per-row trigger, no JSON, no subscription matching on the platform's
--   write path. Dispatch turns the log into events (sql/ingest.sql).
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
-- Rules (applied when the log becomes events):
--   * an update that leaves a row unchanged (every column equal) becomes no event;
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
  -- every workflow the event starts copies it into its context: bounded like a document
  if pg_catalog.pg_column_size(p_payload) > conveyor.limit_setting('max_event_payload_bytes', 1048576) then
    raise exception using
      errcode = '54000',
      message = format(
        'event %s: the payload takes %s bytes, over the limit of %s (setting conveyor.max_event_payload_bytes)',
        p_event_type, pg_catalog.pg_column_size(p_payload), conveyor.limit_setting('max_event_payload_bytes', 1048576)
      ),
      hint = 'Send the entity''s id and let workflows look the rest up (a data step), or store large content elsewhere.';
  end if;
  if not exists (select from conveyor.tenants as t where t.tenant_id = p_tenant_id) then
    raise exception using
      errcode = '22023',
      message = format('event %s: unknown tenant %L', p_event_type, p_tenant_id),
      hint = 'Create the tenant first: `conveyor tenants add ID` (SQL: conveyor.create_tenant).';
  end if;
  -- a reply the platform's own inbound mail reports: correlated to our message like
  -- conveyor.record_email_reply (sql/email_tracking.sql), whose engine event (entity
  -- email_message, source email) stands for it; one naming none of ours is kept as given
  if p_event_type = 'email.message.replied' and p_source is distinct from 'email' then
    v_event_id := (conveyor.record_email_reply(p_tenant_id, p_payload ->> 'in_reply_to', p_payload ->> 'references',
      p_payload - 'in_reply_to' - 'references') ->> 'event_id')::bigint;
    if v_event_id is not null then
      return v_event_id;
    end if;
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
-- The capture triggers: generated per watched table by conveyor.watch.
--
-- The platform's statement pays for one set-based copy of its transition rows into the
-- table's capture log (conveyor_capture.t<oid>, no index), a sequence number and one
-- NOTIFY. Everything else (tenant check, JSON payloads, pairing old and new rows,
-- skipping unchanged rows) happens when dispatch turns the log into events, in
-- conveyor.ingest_captures (sql/ingest.sql). The copies name their columns, so a column
-- the platform adds later does not break its writes; an event trigger re-installs the
-- capture after any ALTER TABLE of a watched table (see conveyor.rewatch_altered_tables).
-- The functions are security definer: the platform's role writes its own table, the log
-- is written as the owner of the capture.
-- ---------------------------------------------------------------------------------

-- The capture log table of a watched table.
create or replace function conveyor.capture_log(p_table regclass) returns text
language sql
immutable
set search_path = ''
as $$
  select 'conveyor_capture.t' || p_table::oid::text
$$;

-- Creates p_table's capture log, the three trigger functions, the triggers and the
-- log's ingest function.
create or replace function conveyor.install_capture(p_table regclass, p_prefix text) returns void
language plpgsql
set search_path = ''
as $$
declare
  v_log text := conveyor.capture_log(p_table);
  v_name text := 't' || p_table::oid::text;
  v_columns text;
  v_values text;
  v_op record;
begin
  if exists (
    select from pg_catalog.pg_attribute as a
    where a.attrelid = p_table and a.attnum > 0 and not a.attisdropped
      and a.attname in ('_conveyor_statement', '_conveyor_op', '_conveyor_at')
  ) then
    raise exception using
      errcode = '42701',
      message = format(
        'watch %s: the column names _conveyor_statement, _conveyor_op and _conveyor_at are reserved'
        ' for the capture log', p_table
      ),
      hint = 'Rename the column, or capture changes with conveyor.emit instead.';
  end if;
  select
    string_agg(pg_catalog.quote_ident(a.attname), ', ' order by a.attnum),
    string_agg('r.' || pg_catalog.quote_ident(a.attname), ', ' order by a.attnum)
  into v_columns, v_values
  from pg_catalog.pg_attribute as a
  where a.attrelid = p_table and a.attnum > 0 and not a.attisdropped;

  execute format(
    'create table %s (like %s, _conveyor_statement bigint not null, _conveyor_op "char" not null, '
    '_conveyor_at timestamptz not null default pg_catalog.now())',
    v_log, p_table
  );
  execute format('comment on table %s is %L', v_log,
    format('Rows captured from %s waiting to become %s events (conveyor.ingest_captures).', p_table, p_prefix));

  -- _conveyor_op: I inserted, D deleted, o / n the old / new row of an update
  for v_op in
    select * from (values
      ('insert', format('select %s, v_statement, ''I'' from conveyor_new as r', v_values)),
      ('update', format(
        'select %1$s, v_statement, ''o'' from conveyor_old as r union all select %1$s, v_statement, ''n'' from conveyor_new as r',
        v_values)),
      ('delete', format('select %s, v_statement, ''D'' from conveyor_old as r', v_values))
    ) as o (kind, source)
  loop
    execute format($f$
      create or replace function conveyor_capture.%1$I() returns trigger
      language plpgsql
      security definer
      set search_path = ''
      as $body$
      declare
        v_statement bigint := pg_catalog.nextval('conveyor.capture_statements');
      begin
        insert into %2$s (%3$s, _conveyor_statement, _conveyor_op)
        %4$s;
        if found then
          perform pg_catalog.pg_notify('conveyor_wakeup', 'event');
        end if;
        return null;
      end;
      $body$
      $f$,
      v_name || '_' || v_op.kind, v_log, v_columns, v_op.source
    );
    execute format('revoke all on function conveyor_capture.%I() from public', v_name || '_' || v_op.kind);
  end loop;

  execute format(
    'create trigger conveyor_capture_insert after insert on %s '
    'referencing new table as conveyor_new for each statement execute function conveyor_capture.%I()',
    p_table, v_name || '_insert'
  );
  execute format(
    'create trigger conveyor_capture_update after update on %s '
    'referencing old table as conveyor_old new table as conveyor_new for each statement '
    'execute function conveyor_capture.%I()',
    p_table, v_name || '_update'
  );
  execute format(
    'create trigger conveyor_capture_delete after delete on %s '
    'referencing old table as conveyor_old for each statement execute function conveyor_capture.%I()',
    p_table, v_name || '_delete'
  );
  -- and the statement that turns the log into events, for these columns (sql/ingest.sql)
  perform conveyor.install_ingest(p_table);
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
      hint = 'Pass an entity (`conveyor tables watch --entity`, p_entity): a lowercase name of letters, digits and _, starting with a letter (contact).';
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
      hint = 'Name the table''s tenant and id columns: `conveyor tables watch --tenant-column C --id-column C` (p_tenant_column, p_id_column).';
  end if;

  v_prefix := p_module || '.' || v_entity;
  -- what is still in the log becomes events first, as the old capture described it
  perform conveyor.unwatch(p_table);
  perform conveyor.install_capture(p_table, v_prefix);
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
  -- rows captured before now still become events (in this transaction)
  if pg_catalog.to_regclass(conveyor.capture_log(p_table)) is not null
    and exists (select from conveyor.watched_tables as w where w.table_name = p_table) then
    perform conveyor.ingest_table(p_table, null);
  end if;
  foreach v_trigger in array array['conveyor_capture_insert', 'conveyor_capture_update', 'conveyor_capture_delete']
  loop
    execute format('drop trigger if exists %I on %s', v_trigger, p_table);
    execute format('drop function if exists conveyor_capture.%I()',
      't' || p_table::oid::text || '_' || pg_catalog.split_part(v_trigger, '_', 3));
  end loop;
  execute format('drop function if exists conveyor_capture.%I(integer, text, text, text)',
    't' || p_table::oid::text || '_ingest');
  execute format('drop table if exists %s', conveyor.capture_log(p_table));
  delete from conveyor.watched_tables as w where w.table_name = p_table;
  get diagnostics v_removed = row_count;
  return v_removed > 0;
end;
$$;

-- After ALTER TABLE on a watched table (a column added, dropped, renamed or retyped),
-- capture it again with its new columns, so the platform's next write neither fails on a
-- dropped column nor leaves a new one out. Rows captured before the change become events
-- first, as they were. Refuses (and so rolls back) an ALTER that drops the tenant or id
-- column of a watched table: unwatch it first.
create or replace function conveyor.rewatch_altered_tables() returns event_trigger
language plpgsql
-- the platform's role may alter its own table; re-installing the capture is Conveyor's
security definer
set search_path = ''
as $$
declare
  v_watched conveyor.watched_tables;
begin
  for v_watched in
    select distinct w.*
    from pg_catalog.pg_event_trigger_ddl_commands() as c
    join conveyor.watched_tables as w on w.table_name = c.objid
    where c.command_tag = 'ALTER TABLE' and c.classid = 'pg_catalog.pg_class'::regclass
  loop
    perform conveyor.watch(
      v_watched.table_name, v_watched.module, v_watched.entity, v_watched.tenant_column, v_watched.id_column
    );
  end loop;
end;
$$;

-- Event triggers need a superuser. Without one (a managed database, say), run
-- conveyor.watch again after altering a watched table's columns.
do $$
begin
  if not exists (select from pg_catalog.pg_event_trigger as t where t.evtname = 'conveyor_rewatch_altered_tables') then
    if (select r.rolsuper from pg_catalog.pg_roles as r where r.rolname = current_user) then
      create event trigger conveyor_rewatch_altered_tables on ddl_command_end
      when tag in ('ALTER TABLE')
      execute function conveyor.rewatch_altered_tables();
    else
      raise notice 'not a superuser: conveyor.watch must be run again after altering a watched table''s columns';
    end if;
  end if;
end;
$$;

revoke execute on function conveyor.emit(text, text, jsonb, text, text, text, text) from public;
grant execute on function conveyor.emit(text, text, jsonb, text, text, text, text)
to conveyor_app, conveyor_service;
-- Tables watched before the capture log existed get it now (their triggers called the
-- functions dropped below).
do $$
declare
  v_watched conveyor.watched_tables;
begin
  for v_watched in
    select w.* from conveyor.watched_tables as w
    where pg_catalog.to_regclass(conveyor.capture_log(w.table_name)) is null
  loop
    perform conveyor.watch(
      v_watched.table_name, v_watched.module, v_watched.entity, v_watched.tenant_column, v_watched.id_column
    );
  end loop;
end;
$$;
drop function if exists conveyor.capture_insert();
drop function if exists conveyor.capture_update();
drop function if exists conveyor.capture_delete();
revoke execute on function conveyor.install_capture(regclass, text) from public;
revoke execute on function conveyor.rewatch_altered_tables() from public;
revoke execute on function conveyor.watch(regclass, text, text, name, name),
conveyor.unwatch(regclass) from public;
