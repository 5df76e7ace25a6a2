-- Bounds on a workflow document, checked before anything else validates it: its size,
-- its number of steps, the nesting depth of its values and the length of its strings.
-- The other validators recurse into conditions and templates and their cost grows with
-- the document; these checks keep both bounded (no stack-depth error, no validation that
-- takes minutes). The walk below is a recursive CTE, i.e. a loop over levels that stops
-- at the depth limit, never a recursive function call. docs/limits.md lists them.

-- Each limit: an engine-wide setting with a default (conveyor.limit_setting, sql/limits.sql).
create or replace function conveyor.max_document_bytes()
returns integer
language sql
stable
set search_path = ''
as $$
  select conveyor.limit_setting('max_document_bytes', 262144)::integer;
$$;

create or replace function conveyor.max_workflow_steps()
returns integer
language sql
stable
set search_path = ''
as $$
  select conveyor.limit_setting('max_workflow_steps', 500)::integer;
$$;

create or replace function conveyor.max_document_depth()
returns integer
language sql
stable
set search_path = ''
as $$
  select conveyor.limit_setting('max_document_depth', 32)::integer;
$$;

create or replace function conveyor.max_document_string()
returns integer
language sql
stable
set search_path = ''
as $$
  select conveyor.limit_setting('max_document_string', 65536)::integer;
$$;

-- The limits a document exceeds, as "<path>: <message>" (empty when it is within all of
-- them). The size is that of the JSON text (jsonb::text); a document over it, or with
-- more steps than the limit, is not walked at all. Depth counts containers from the document down: {"a": [1]} has depth 2.
-- Only the first value past the depth limit is reported; the walk stops there.
create or replace function conveyor.document_limit_errors(p_document jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_max_bytes integer := conveyor.max_document_bytes();
  v_max_steps integer := conveyor.max_workflow_steps();
  v_max_depth integer := conveyor.max_document_depth();
  v_max_string integer := conveyor.max_document_string();
  v_bytes integer := pg_catalog.octet_length(p_document::text);
begin
  if v_bytes > v_max_bytes then
    return next pg_catalog.format(
      '(document): size %s bytes exceeds the limit %s (setting conveyor.max_document_bytes)', v_bytes, v_max_bytes
    );
    return;
  end if;

  if pg_catalog.jsonb_typeof(p_document -> 'steps') = 'array'
    and pg_catalog.jsonb_array_length(p_document -> 'steps') > v_max_steps then
    return next pg_catalog.format(
      'steps: %s steps exceed the limit %s (setting conveyor.max_workflow_steps)',
      pg_catalog.jsonb_array_length(p_document -> 'steps'), v_max_steps
    );
    return;  -- not walked either: with the size limit raised, 60,000 steps took 1.7 s to walk
  end if;

  -- Level by level: level 0 is the document; children are expanded only below the depth
  -- limit, so a container at level v_max_depth is one nested v_max_depth + 1 deep.
  return query
  with recursive nodes (path, key, value, level, ord) as (
    select ''::text, null::text, p_document, 0, '{}'::integer[]
    union all
    select c.path, c.key, c.value, n.level + 1, n.ord || c.i
    from nodes as n
    cross join lateral (
      select
        conveyor.document_path(
          n.path, case when pg_catalog.length(e.key) > 64 then pg_catalog.left(e.key, 61) || '...' else e.key end
        ) as path,
        e.key, e.value, e.i::integer as i
      from pg_catalog.jsonb_each(case when pg_catalog.jsonb_typeof(n.value) = 'object' then n.value else '{}' end)
        with ordinality as e (key, value, i)
      union all
      select n.path || pg_catalog.format('[%s]', a.i - 1), null, a.value, a.i::integer
      from pg_catalog.jsonb_array_elements(case when pg_catalog.jsonb_typeof(n.value) = 'array' then n.value else '[]' end)
        with ordinality as a (value, i)
    ) as c
    where n.level < v_max_depth and pg_catalog.jsonb_typeof(n.value) in ('object', 'array')
  ),

  problems as (
    (
      select n.ord, pg_catalog.format(
        '%s: nesting depth %s exceeds the limit %s (setting conveyor.max_document_depth)',
        coalesce(nullif(n.path, ''), '(document)'), n.level + 1, v_max_depth
      ) as message
      from nodes as n
      where n.level = v_max_depth and pg_catalog.jsonb_typeof(n.value) in ('object', 'array')
      order by n.ord
      limit 1
    )
    union all
    select n.ord, pg_catalog.format(
      '%s: string of %s characters exceeds the limit %s (setting conveyor.max_document_string)',
      coalesce(nullif(n.path, ''), '(document)'), pg_catalog.length(n.value #>> '{}'), v_max_string
    )
    from nodes as n
    where pg_catalog.jsonb_typeof(n.value) = 'string' and pg_catalog.length(n.value #>> '{}') > v_max_string
    union all
    select n.ord, pg_catalog.format(
      '%s: key of %s characters exceeds the limit %s (setting conveyor.max_document_string)',
      n.path, pg_catalog.length(n.key), v_max_string
    )
    from nodes as n
    where pg_catalog.length(n.key) > v_max_string
  )

  select p.message from problems as p order by p.ord;
end;
$$;
