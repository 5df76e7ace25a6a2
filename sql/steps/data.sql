-- The data step: {"id", "data": {"op": lookup | create | update | delete | add_tag |
-- remove_tag, "entity", ...}, "next"?}: a change to (or a read of) a registered entity's
-- rows, always scoped to the tenant (conveyor.data_step, sql/interpreter.sql).

drop function if exists conveyor.document_data_errors(jsonb, text, text[]);
drop function if exists conveyor.document_data_errors(jsonb, text, jsonb);

-- A data step: {"op", "entity", "id"?, "where"?, "values"?, "tag"?} against conveyor.entities
-- and the columns of the entity's table (so a typo is caught at publish, not at run time).
create or replace function conveyor.step_data_errors(p_step jsonb, p_path text, p_step_ids jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_data jsonb := p_step -> 'data';
  v_op text := v_data ->> 'op';
  v_path text := p_path || '.data';
  v_entity conveyor.entities;
  v_optional text[];
begin
  if jsonb_typeof(v_data) is distinct from 'object' then
    return next format('%s: expected an object with "op" and "entity"', v_path);
    return;
  end if;

  v_optional := case v_op
    when 'lookup' then array['id', 'where']
    when 'create' then array['values']
    when 'update' then array['id', 'where', 'values']
    when 'delete' then array['id', 'where']
    when 'add_tag' then array['id', 'where', 'tag']
    when 'remove_tag' then array['id', 'where', 'tag']
  end;
  if v_optional is null then
    if v_data ? 'op' then
      return next format(
        '%s.op: unknown data operation %s (expected one of: lookup, create, update, delete, add_tag, remove_tag)',
        v_path, (v_data -> 'op')::text
      );
    end if;
    v_optional := array['id', 'where', 'values', 'tag'];
  end if;
  return query
  select k.message from conveyor.document_key_errors(v_data, v_path, array['op', 'entity'], v_optional) as k (message);

  if v_op = 'create' and not v_data ? 'values' then
    return next format('%s.values: required key is missing (the columns of the new row)', v_path);
  end if;
  if v_op = 'update' and not v_data ? 'values' then
    return next format('%s.values: required key is missing (the columns to change)', v_path);
  end if;
  if v_op in ('update', 'delete', 'lookup', 'add_tag', 'remove_tag') and not (v_data ? 'id' or v_data ? 'where') then
    return next format('%s: needs "id" or "where" to find the row', v_path);
  end if;
  if v_op in ('add_tag', 'remove_tag') and not v_data ? 'tag' then
    return next format('%s.tag: required key is missing', v_path);
  end if;
  if v_data ? 'where' and jsonb_typeof(v_data -> 'where') <> 'object' then
    return next format('%s.where: expected an object of column names and values', v_path);
  end if;
  if v_data ? 'values' and jsonb_typeof(v_data -> 'values') <> 'object' then
    return next format('%s.values: expected an object of column names and values', v_path);
  end if;

  if v_data ? 'entity' then
    select e.* into v_entity from conveyor.entities as e where e.entity = v_data ->> 'entity';
    if not found then
      return next format(
        '%s.entity: unknown entity %s (registered: %s)',
        v_path, (v_data -> 'entity')::text,
        coalesce((select string_agg(e.entity, ', ' order by e.entity) from conveyor.entities as e), 'none')
      );
    else
      if v_op in ('add_tag', 'remove_tag') and v_entity.tags_column is null then
        return next format('%s.op: entity "%s" has no tags column, so %s is not possible', v_path, v_entity.entity, v_op);
      end if;
      -- Columns named in where / values must exist; the engine owns the tenant column.
      return query
      select case
        when c.column_name = v_entity.tenant_column::text then
          format('%s.%s.%s: the tenant column is set by the engine', v_path, c.part, c.column_name)
        else format('%s.%s.%s: table %s has no column "%s"', v_path, c.part, c.column_name,
          v_entity.table_name::text, c.column_name)
      end
      from (
        select p.part, p.ord, k.k as column_name
        from (values ('where', 1), ('values', 2)) as p (part, ord)
        cross join lateral jsonb_object_keys(
          case when jsonb_typeof(v_data -> p.part) = 'object' then v_data -> p.part else '{}' end
        ) as k (k)
      ) as c
      where c.column_name = v_entity.tenant_column::text
        or not exists (
          select from pg_catalog.pg_attribute as a
          where a.attrelid = v_entity.table_name and a.attname = c.column_name and a.attnum > 0
            and not a.attisdropped
        )
      order by c.ord, c.column_name;
    end if;
  end if;

  return query
  select t.message
  from (values ('id', 1), ('where', 2), ('values', 3), ('tag', 4)) as p (part, ord)
  cross join lateral conveyor.document_template_errors(v_data -> p.part, v_path || '.' || p.part, p_step_ids)
    as t (message)
  where v_data ? p.part
  order by p.ord;
end;
$$;

-- What compiling adds for a data step: its type (data.<op>).
create or replace function conveyor.step_data_compiled(p_step jsonb, p_fall_through text)
returns jsonb
language sql
immutable
parallel safe
set search_path = ''
as $$
  select pg_catalog.jsonb_build_object('action_type', 'data.' || (p_step -> 'data' ->> 'op'));
$$;


-- A data step on a registered entity (conveyor.entities). Always scoped to p_tenant_id
-- through the registry's tenant column; table and column identifiers come from the
-- registry and the catalog (format %I), values are passed as parameters ($1..$5):
-- user text is never concatenated into SQL.
-- Outputs: lookup → the row or null; create → the new row; update, delete, add_tag,
-- remove_tag → {"count": n, "rows": [...]}.
create or replace function conveyor.data_step(p_tenant_id text, p_spec jsonb, p_where text)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_op text := p_spec ->> 'op';
  v_entity conveyor.entities;
  v_tenant_type text;
  v_id_type text;
  v_unknown text;
  v_filter text;
  v_set text;
  v_cols text;
  v_sql text;
  v_result jsonb;
  v_where jsonb := coalesce(p_spec -> 'where', '{}');
  v_values jsonb := coalesce(p_spec -> 'values', '{}');
begin
  select e.* into v_entity from conveyor.entities as e where e.entity = p_spec ->> 'entity';
  if not found then
    raise exception using
      errcode = '22023',
      message = format('%s.entity: unknown entity "%s"', p_where, p_spec ->> 'entity'),
      hint = 'register platform entities in conveyor.entities';
  end if;
  if jsonb_typeof(v_where) <> 'object' or jsonb_typeof(v_values) <> 'object' then
    raise exception using
      errcode = '22023',
      message = format('%s: "where" and "values" must be objects', p_where);
  end if;

  select string_agg(format('"%s"', k.key), ', ')
  into v_unknown
  from (select jsonb_object_keys(v_where || v_values) as key) as k
  where not exists (
    select from pg_catalog.pg_attribute as a
    where a.attrelid = v_entity.table_name and a.attname = k.key and a.attnum > 0 and not a.attisdropped
  );
  if v_unknown is not null then
    raise exception using
      errcode = '22023',
      message = format('%s: entity "%s" has no column(s) %s', p_where, v_entity.entity, v_unknown);
  end if;
  if v_values ? v_entity.tenant_column::text then
    raise exception using
      errcode = '22023',
      message = format('%s.values.%s: the tenant column is set by the engine', p_where, v_entity.tenant_column);
  end if;

  select pg_catalog.format_type(a.atttypid, a.atttypmod) into v_tenant_type
  from pg_catalog.pg_attribute as a
  where a.attrelid = v_entity.table_name and a.attname = v_entity.tenant_column;
  select pg_catalog.format_type(a.atttypid, a.atttypmod) into v_id_type
  from pg_catalog.pg_attribute as a
  where a.attrelid = v_entity.table_name and a.attname = v_entity.id_column;

  -- $1 tenant, $2 id, $3 values (jsonb), $4 where (jsonb), $5 tag
  v_filter := format('t.%I = $1::%s', v_entity.tenant_column, v_tenant_type);
  if p_spec ? 'id' then
    v_filter := v_filter || format(' and t.%I = $2::%s', v_entity.id_column, v_id_type);
  end if;
  select v_filter || coalesce(string_agg(format(' and t.%I = w.%I', a.attname, a.attname), '' order by a.attnum), '')
  into v_filter
  from pg_catalog.pg_attribute as a
  where a.attrelid = v_entity.table_name and a.attnum > 0 and not a.attisdropped
    and v_where ? a.attname::text;

  if v_op <> 'create' and not (p_spec ? 'id') and v_where = '{}' then
    raise exception using
      errcode = '22023',
      message = format('%s: data.%s needs "id" or "where"', p_where, v_op),
      hint = 'a data step never touches every row of an entity';
  end if;

  select
    string_agg(format('%I = r.%I', a.attname, a.attname), ', ' order by a.attnum),
    string_agg(format('%I', a.attname), ', ' order by a.attnum)
  into v_set, v_cols
  from pg_catalog.pg_attribute as a
  where a.attrelid = v_entity.table_name and a.attnum > 0 and not a.attisdropped
    and v_values ? a.attname::text;

  case v_op
    when 'lookup' then
      v_sql := format(
        'select to_jsonb(t) from %s as t, jsonb_populate_record(null::%s, $4) as w where %s limit 1',
        v_entity.table_name, v_entity.table_name, v_filter
      );
    when 'create' then
      v_sql := format(
        'insert into %s as t (%I%s) select $1::%s%s from jsonb_populate_record(null::%s, $3) as r returning to_jsonb(t)',
        v_entity.table_name, v_entity.tenant_column, coalesce(', ' || v_cols, ''), v_tenant_type,
        coalesce((
          select string_agg(format(', r.%I', a.attname), '' order by a.attnum)
          from pg_catalog.pg_attribute as a
          where a.attrelid = v_entity.table_name and a.attnum > 0 and not a.attisdropped
            and v_values ? a.attname::text
        ), ''),
        v_entity.table_name
      );
    when 'update' then
      if v_set is null then
        raise exception using errcode = '22023', message = format('%s.values: nothing to update', p_where);
      end if;
      v_sql := format(
        'with u as (update %s as t set %s from jsonb_populate_record(null::%s, $3) as r, '
        'jsonb_populate_record(null::%s, $4) as w where %s returning to_jsonb(t) as row) '
        'select jsonb_build_object(''count'', count(*), ''rows'', coalesce(jsonb_agg(u.row), ''[]'')) from u',
        v_entity.table_name, v_set, v_entity.table_name, v_entity.table_name, v_filter
      );
    when 'delete' then
      v_sql := format(
        'with d as (delete from %s as t using jsonb_populate_record(null::%s, $4) as w where %s '
        'returning to_jsonb(t) as row) '
        'select jsonb_build_object(''count'', count(*), ''rows'', coalesce(jsonb_agg(d.row), ''[]'')) from d',
        v_entity.table_name, v_entity.table_name, v_filter
      );
    when 'add_tag', 'remove_tag' then
      if v_entity.tags_column is null then
        raise exception using
          errcode = '22023',
          message = format('%s: entity "%s" has no tags column', p_where, v_entity.entity);
      end if;
      if coalesce(p_spec ->> 'tag', '') = '' then
        raise exception using errcode = '22023', message = format('%s.tag: a tag is required', p_where);
      end if;
      v_sql := format(
        'with u as (update %s as t set %I = %s from jsonb_populate_record(null::%s, $4) as w where %s '
        'returning to_jsonb(t) as row) '
        'select jsonb_build_object(''count'', count(*), ''rows'', coalesce(jsonb_agg(u.row), ''[]'')) from u',
        v_entity.table_name, v_entity.tags_column,
        case
          when v_op = 'add_tag' then format(
            'case when $5 = any(coalesce(t.%1$I, ''{}'')) then t.%1$I else array_append(coalesce(t.%1$I, ''{}''), $5) end',
            v_entity.tags_column
          )
          else format('array_remove(t.%I, $5)', v_entity.tags_column)
        end,
        v_entity.table_name, v_filter
      );
    else
      raise exception using
        errcode = '22023',
        message = format('%s.op: unknown data operation "%s"', p_where, v_op),
        hint = 'use lookup, create, update, delete, add_tag or remove_tag';
  end case;

  execute v_sql into v_result using p_tenant_id, p_spec ->> 'id', v_values, v_where, p_spec ->> 'tag';
  return v_result;
end;
$$;

-- How a data step runs (put into the interpreter by conveyor.generate_interpreter, sql/step_kinds.sql).
create or replace function conveyor.step_data_code()
returns jsonb
language sql
immutable
parallel safe
set search_path = ''
as $$
  select pg_catalog.jsonb_build_object(
    'run', $code$
if not v_input ? 'op' then
  v_input := v_input || jsonb_build_object('op', pg_catalog.split_part(v_step.action_type, '.', 2));
end if;
v_output := conveyor.data_step(v_exec.tenant_id, v_input, v_where || '.data');
$code$
  );
$$;

revoke all on function conveyor.data_step(text, jsonb, text) from public;
