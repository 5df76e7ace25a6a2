-- Ingest: rows captured from watched tables become events.
--
-- The capture triggers (sql/capture.sql) only copy a statement's transition rows into
-- the table's capture log. Dispatch calls conveyor.ingest_captures first, in its own
-- transaction: the log rows are deleted and their events inserted together, so each
-- captured row becomes its events exactly once, and a rolled-back platform transaction
-- left no log rows to begin with. What the events look like is described at the top of
-- capture.sql; the rules applied here:
--   * an update's old and new rows are paired within their statement by the id and tenant
--     columns (an id or tenant change becomes `deleted` + `created`);
--   * an updated row whose columns are all unchanged becomes no event;
--   * rows of tenants conveyor.tenants does not know (or a null tenant) become no event;
--   * occurred_at is the time of the platform's transaction, not of the ingest;
--   * event ids follow statement order within a table; events of different watched
--     tables are ingested table by table, so their ids need not follow commit order.

-- Creates (or replaces) p_table's ingest function, conveyor_capture.t<oid>_ingest: the
-- statement that turns its capture log into events, written for the log's table name and
-- columns. A generated function rather than one EXECUTE per call, because plpgsql keeps
-- its statement parsed and planned for the session: dispatch runs it for every watched
-- table with captured rows, a handful of rows at a time at a steady rate. install_capture
-- (re)creates it with the log; ingest_table creates it for a table watched before it existed.
create or replace function conveyor.install_ingest(p_table regclass) returns void
language plpgsql
set search_path = ''
as $$
declare
  v_select text;
  v_columns text[];
begin
  -- the platform's columns of the log, in table order: the row the event carries, and the
  -- order of an update's changed list
  select
    string_agg('t.' || pg_catalog.quote_ident(a.attname), ', ' order by a.attnum),
    array_agg(a.attname::text order by a.attnum)
  into v_select, v_columns
  from pg_catalog.pg_attribute as a
  where a.attrelid = conveyor.capture_log(p_table)::regclass and a.attnum > 0 and not a.attisdropped
    and a.attname not in ('_conveyor_statement', '_conveyor_op', '_conveyor_at');
  execute format($f$
    create or replace function conveyor_capture.%3$I(
      p_limit integer, p_id_column text, p_tenant_column text, p_prefix text
    ) returns integer
    language plpgsql
    security definer
    set search_path = ''
    set jit = off
    as $body$
    declare
      v_columns constant text[] := %4$L;
      v_count integer;
    begin
    with bound as (
      select max(s.st) as last_statement
      from (select l._conveyor_statement as st from %1$s as l order by 1 limit p_limit) as s
    ),
    taken as (
      delete from %1$s as l
      using bound
      where l._conveyor_statement <= bound.last_statement
      returning l.*
    ),
    captured as (
      -- the row as the platform's table has it: its own columns, named
      select t._conveyor_statement as st, t._conveyor_op as op, t._conveyor_at as at, pg_catalog.to_jsonb(r) as j
      from taken as t
      cross join lateral (select %2$s) as r
    ),
    changes as (
      select
        c.st, c.at,
        case when c.op = 'I' then c.j end as new_row,
        case when c.op = 'D' then c.j end as old_row
      from captured as c
      where c.op in ('I', 'D')
      union all
      select coalesce(n.st, o.st), coalesce(n.at, o.at), n.j, o.j
      from (select * from captured as c where c.op = 'n') as n
      full join (select * from captured as c where c.op = 'o') as o
        on n.st = o.st and (n.j -> p_id_column) = (o.j -> p_id_column) and (n.j -> p_tenant_column) = (o.j -> p_tenant_column)
    )
    insert into conveyor.events (
      tenant_id, event_type, source, entity_type, entity_id, payload, changed_columns, occurred_at
    )
    select
      coalesce(p.new_row, p.old_row) ->> p_tenant_column,
      p_prefix || case when p.old_row is null then '.created' when p.new_row is null then '.deleted' else '.updated' end,
      pg_catalog.split_part(p_prefix, '.', 1),
      pg_catalog.split_part(p_prefix, '.', 2),
      coalesce(p.new_row, p.old_row) ->> p_id_column,
      case
        when p.old_row is null then pg_catalog.jsonb_build_object('new', p.new_row)
        when p.new_row is null then pg_catalog.jsonb_build_object('old', p.old_row)
        else pg_catalog.jsonb_build_object(
          'old', p.old_row, 'new', p.new_row, 'changed', pg_catalog.to_jsonb(c.changed)
        )
      end,
      case when p.old_row is not null and p.new_row is not null then c.changed end,
      p.at
    from changes as p
    cross join lateral (
      select array_agg(u.col order by u.ord) as changed
      from unnest(v_columns) with ordinality as u (col, ord)
      where p.old_row is not null and p.new_row is not null
        and (p.new_row -> u.col) is distinct from (p.old_row -> u.col)
    ) as c
    join conveyor.tenants as tn on tn.tenant_id = coalesce(p.new_row, p.old_row) ->> p_tenant_column
    where p.old_row is null or p.new_row is null or c.changed is not null
    order by p.st;
      get diagnostics v_count = row_count;
      return v_count;
    end;
    $body$
    $f$, conveyor.capture_log(p_table), v_select, 't' || p_table::oid::text || '_ingest', v_columns);
  execute format(
    'revoke all on function conveyor_capture.%I(integer, text, text, text) from public',
    't' || p_table::oid::text || '_ingest'
  );
end;
$$;

-- Turns p_table's captured rows into events: whole statements, in statement order, until
-- at least p_limit rows are taken (null: all of them). Returns the number of events.
-- One ingester per table at a time (the old and new rows of an update must be taken
-- together); with p_limit another caller's ingest is skipped rather than awaited.
create or replace function conveyor.ingest_table(p_table regclass, p_limit integer default null)
returns integer
language plpgsql
security definer
set search_path = ''
set jit = off
as $$
declare
  v_watched conveyor.watched_tables;
  v_ingest text := 't' || p_table::oid::text || '_ingest';
  v_lock bigint := (1132::bigint << 32) | p_table::oid::bigint;
  v_count integer;
begin
  select w.* into v_watched from conveyor.watched_tables as w where w.table_name = p_table;
  if not found or pg_catalog.to_regclass(conveyor.capture_log(p_table)) is null then
    return 0;
  end if;
  if p_limit is null then
    perform pg_catalog.pg_advisory_xact_lock(v_lock);
  elsif not pg_catalog.pg_try_advisory_xact_lock(v_lock) then
    return 0;
  end if;

  if pg_catalog.to_regprocedure(
    format('conveyor_capture.%I(integer, text, text, text)', v_ingest)
  ) is null then
    perform conveyor.install_ingest(p_table);
  end if;
  execute format('select conveyor_capture.%I($1, $2, $3, $4)', v_ingest)
  into v_count
  using p_limit, v_watched.id_column::text, v_watched.tenant_column::text,
    v_watched.module || '.' || v_watched.entity;
  return v_count;
end;
$$;

-- Ingests every watched table's captured rows (at most about p_limit rows per table and
-- call); returns the number of events created. Called by conveyor.dispatch.
create or replace function conveyor.ingest_captures(p_limit integer default 1000)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_table regclass;
  v_pending boolean;
  v_count integer := 0;
begin
  for v_table in
    select w.table_name from conveyor.watched_tables as w
    where pg_catalog.to_regclass(conveyor.capture_log(w.table_name)) is not null
    order by w.table_name
  loop
    execute format('select exists (select from %s)', conveyor.capture_log(v_table)) into v_pending;
    if v_pending then
      v_count := v_count + conveyor.ingest_table(v_table, p_limit);
    end if;
  end loop;
  return v_count;
end;
$$;

revoke all on function conveyor.install_ingest(regclass) from public;
revoke all on function conveyor.ingest_table(regclass, integer) from public;
revoke all on function conveyor.ingest_captures(integer) from public;
grant execute on function conveyor.ingest_captures(integer) to conveyor_service;
