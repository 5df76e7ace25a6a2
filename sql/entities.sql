-- Registering a platform table as an entity that data steps (read, update, add_tag, ...)
-- may read and change (conveyor.entities). Administration, like conveyor.watch: run it as
-- the role that runs `conveyor migrate` (CLI: `conveyor entities add`).
create or replace function conveyor.register_entity(
  p_entity text,
  p_table regclass,
  p_id_column name default 'id',
  p_tenant_column name default 'tenant_id',
  p_tags_column name default null
) returns boolean
language plpgsql
set search_path = ''
as $$
declare
  v_missing text;
  v_existed boolean;
begin
  if p_entity is null or p_entity !~ '^[a-z][a-z0-9_]*$' then
    raise exception using
      errcode = '22023',
      message = format('entity %L: invalid name', p_entity),
      hint = 'An entity is a lowercase name of letters, digits and _, starting with a letter (contact).';
  end if;
  if p_table is null
    or (select c.relkind from pg_catalog.pg_class as c where c.oid = p_table) not in ('r', 'p') then
    raise exception using
      errcode = '22023',
      message = format('entity %s: %s is not a table', p_entity, coalesce(p_table::text, 'null'));
  end if;
  select string_agg(format('%s (%s column)', m.col, m.role), ', ' order by m.ord)
  into v_missing
  from (values (p_id_column, 'id', 1), (p_tenant_column, 'tenant', 2), (p_tags_column, 'tags', 3))
    as m (col, role, ord)
  where m.col is not null and not exists (
    select from pg_catalog.pg_attribute as a
    where a.attrelid = p_table and a.attname = m.col and a.attnum > 0 and not a.attisdropped
  );
  if v_missing is not null then
    raise exception using
      errcode = '42703',
      message = format('entity %s: table %s has no such column: %s', p_entity, p_table, v_missing),
      hint = 'Name the table''s columns with --id-column, --tenant-column and --tags-column.';
  end if;
  if p_tags_column is not null and (
    select a.atttypid from pg_catalog.pg_attribute as a
    where a.attrelid = p_table and a.attname = p_tags_column
  ) <> 'text[]'::regtype then
    raise exception using
      errcode = '22023',
      message = format('entity %s: the tags column %s of %s must be text[]', p_entity, p_tags_column, p_table);
  end if;
  v_existed := exists (select from conveyor.entities as e where e.entity = p_entity);
  insert into conveyor.entities (entity, table_name, id_column, tenant_column, tags_column)
  values (p_entity, p_table, p_id_column, p_tenant_column, p_tags_column)
  on conflict (entity) do update set
    table_name = excluded.table_name,
    id_column = excluded.id_column,
    tenant_column = excluded.tenant_column,
    tags_column = excluded.tags_column;
  return not v_existed;
end;
$$;
