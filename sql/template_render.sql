-- Templates, rendered: every `{{ ... }}` in a string or in any JSON value replaced by its
-- value (sql/templates.sql describes the syntax), within conveyor.max_rendered_bytes().

-- The largest value one template may render, and one step's whole rendered input, in bytes
-- (setting conveyor.max_rendered_bytes, default 1 MiB: 16 times the largest body an HTTP
-- action or a webhook takes in, far above any email; rendering that much takes milliseconds).
-- (plpgsql: a SQL function called from plpgsql is planned again in every transaction)
create or replace function conveyor.max_rendered_bytes() returns integer
language plpgsql
stable
parallel safe
set search_path = ''
as $$
begin
  return coalesce(nullif(pg_catalog.current_setting('conveyor.max_rendered_bytes', true), '')::integer, 1048576);
end;
$$;

-- Raises the "rendered value too large" error (declared jsonb to fit in expressions).
create or replace function conveyor.render_too_large(p_where text, p_bytes bigint, p_what text default 'value')
returns jsonb
language plpgsql
stable
parallel safe
set search_path = ''
as $$
begin
  raise exception using
    errcode = '54000',
    message = pg_catalog.format(
      '%sthe rendered %s is %s bytes or more, over the limit of %s bytes (setting conveyor.max_rendered_bytes)',
      coalesce(p_where || ': ', ''), p_what, p_bytes, conveyor.max_rendered_bytes()
    ),
    hint = 'A template that repeats a value (in a loop, say) grows it each time; render a part of it instead.';
end;
$$;

-- Renders the templates in one string (see the top of sql/templates.sql). p_item: the value of
-- the root `item` (see template_eval). p_escape: HTML-escape each expression's value (an
-- email's html; the literal text around the expressions stays as written), except an
-- expression that says `| raw` (the tenant vouches for it) or `| escape` (already done).
-- The text is split once at each `{{` and the output built as a list of parts whose total
-- length is checked before each one is added: linear in the text (re-slicing the rest of
-- it after each expression made a 300 KB template of 30,000 expressions take minutes), and
-- a template that doubles a string stops at conveyor.max_rendered_bytes() instead of at
-- jsonb's 256 MB.
drop function if exists conveyor.render_string(text, jsonb, text);
create or replace function conveyor.render_string(
  p_text text, p_context jsonb, p_where text default null, p_item jsonb default null, p_escape boolean default false
)
returns jsonb
language plpgsql
stable
parallel safe
set search_path = ''
as $$
declare
  -- an expression runs from a `{{` to the first `}}` after it (a `{{` inside it included):
  -- the same split as conveyor.template_pattern()
  v_chunks text[];
  v_chunk_count integer;
  v_index integer := 2;
  v_first integer;
  v_parts text[];
  v_count integer := 1;
  v_bytes bigint;
  v_max integer;
  v_close integer;
  v_expr text;
  v_value jsonb;
  v_text text;
begin
  if pg_catalog.strpos(p_text, '{{') = 0 then
    return pg_catalog.to_jsonb(p_text);
  end if;
  -- conveyor.max_rendered_bytes(), inlined: this is the hot path
  v_max := coalesce(nullif(pg_catalog.current_setting('conveyor.max_rendered_bytes', true), '')::integer, 1048576);
  -- chunk 1 is the text before the first `{{`; each other chunk starts after a `{{`
  v_chunks := pg_catalog.string_to_array(p_text, '{{');
  v_chunk_count := pg_catalog.cardinality(v_chunks);
  v_parts := array[v_chunks[1]];
  v_bytes := pg_catalog.octet_length(v_chunks[1]);
  while v_index <= v_chunk_count loop
    v_close := pg_catalog.strpos(v_chunks[v_index], '}}');
    if v_close > 0 then
      v_expr := pg_catalog.left(v_chunks[v_index], v_close - 1);
    else
      -- a `{{` inside the expression: it goes on in the next chunks
      v_first := v_index;
      while v_close = 0 loop
        v_index := v_index + 1;
        if v_index > v_chunk_count then
          raise exception using
            errcode = '22023',
            message = pg_catalog.format('%sunclosed "{{" in %s', coalesce(p_where || ': ', ''), pg_catalog.to_jsonb(p_text)),
            hint = 'Every {{ needs a matching }}.';
        end if;
        v_close := pg_catalog.strpos(v_chunks[v_index], '}}');
      end loop;
      v_expr := pg_catalog.array_to_string(v_chunks[v_first:v_index - 1], '{{') || '{{'
        || pg_catalog.left(v_chunks[v_index], v_close - 1);
    end if;
    if pg_catalog.strpos(v_expr, '|') = 0 and pg_catalog.btrim(v_expr) ~ '^[^\s.{}]+(\.[^\s.{}]+)*$'
      and pg_catalog.split_part(pg_catalog.btrim(v_expr), '.', 1) not in ('now', 'item') then
      -- template_eval's fast path, inlined: a plain path without filters (not `now` or `item`)
      v_value := p_context #> pg_catalog.string_to_array(pg_catalog.btrim(v_expr), '.');
    else
      v_value := conveyor.template_eval(v_expr, p_context, p_where, p_item);
    end if;
    if p_escape and pg_catalog.jsonb_typeof(v_value) in ('string', 'array', 'object')
      and v_expr !~ '\|\s*(raw|escape)\s*($|\|)' then
      v_value := pg_catalog.to_jsonb(conveyor.html_escape(conveyor.json_text(v_value)));
    end if;
    if v_count = 1 and v_index = v_chunk_count and v_chunks[1] = ''
      and v_close + 1 = pg_catalog.length(v_chunks[v_index]) then
      -- the whole string is one expression: keep the value's JSON type (a copy of a value
      -- of the context, measured as jsonb)
      if pg_catalog.pg_column_size(v_value) > v_max then
        return conveyor.render_too_large(p_where, pg_catalog.pg_column_size(v_value));
      end if;
      return coalesce(v_value, conveyor.template_missing(v_expr, p_where));
    end if;
    if v_value is null then
      perform conveyor.template_missing(v_expr, p_where);
    end if;
    -- conveyor.json_text, inlined: this is the hot path
    v_text := case pg_catalog.jsonb_typeof(v_value)
      when 'string' then v_value #>> '{}'
      when 'number' then pg_catalog.trim_scale((v_value #>> '{}')::numeric)::text
      when 'null' then ''
      else v_value::text
    end || pg_catalog.substr(v_chunks[v_index], v_close + 2);
    v_bytes := v_bytes + pg_catalog.octet_length(v_text);
    if v_bytes > v_max then
      return conveyor.render_too_large(p_where, v_bytes);
    end if;
    v_count := v_count + 1;
    v_parts[v_count] := v_text;
    v_index := v_index + 1;
  end loop;
  return pg_catalog.to_jsonb(pg_catalog.array_to_string(v_parts, ''));
end;
$$;

-- Renders every string in any JSON value. p_where names the location for errors
-- (e.g. 'steps[2].with'); nested values extend it (`.to`, `[0]`). p_item: the value of the
-- root `item` (see template_eval). The result may not grow past conveyor.max_rendered_bytes()
-- (its size is checked after each member is rendered into it).
drop function if exists conveyor.render(jsonb, jsonb, text);
create or replace function conveyor.render(p_value jsonb, p_context jsonb, p_where text default null, p_item jsonb default null)
returns jsonb
language plpgsql
stable
parallel safe
set search_path = ''
as $$
declare
  v_result jsonb := p_value;
  v_key text;
  v_item jsonb;
  v_index integer;
  v_where text;
  v_keys jsonb;
  v_max integer;
begin
  if p_value is null or pg_catalog.strpos(p_value::text, '{{') = 0 then
    return p_value;
  end if;
  if pg_catalog.jsonb_typeof(p_value) = 'string' then
    return conveyor.render_string(p_value #>> '{}', p_context, p_where, p_item);
  end if;
  v_max := conveyor.max_rendered_bytes();
  case pg_catalog.jsonb_typeof(p_value)
    when 'object' then
      -- only members holding a template are rendered and replaced
      -- the keys come from a plain function call (no query per call: this is the hot path)
      v_keys := pg_catalog.jsonb_path_query_array(p_value, '$.keyvalue().key');
      for v_index in 0 .. pg_catalog.jsonb_array_length(v_keys) - 1 loop
        v_key := v_keys ->> v_index;
        v_item := p_value -> v_key;
        continue when pg_catalog.strpos(v_item::text, '{{') = 0;
        v_where := case
          when v_key ~ '^[A-Za-z_][A-Za-z0-9_]*$' then pg_catalog.ltrim(coalesce(p_where, '') || '.' || v_key, '.')
          else coalesce(p_where, '') || '[' || pg_catalog.to_jsonb(v_key)::text || ']'
        end;
        -- strings (the common case) go straight to render_string
        if pg_catalog.jsonb_typeof(v_item) = 'string' then
          v_item := conveyor.render_string(v_item #>> '{}', p_context, v_where, p_item);
        else
          v_item := conveyor.render(v_item, p_context, v_where, p_item);
        end if;
        v_result := pg_catalog.jsonb_set(v_result, array[v_key], coalesce(v_item, 'null'::jsonb));
        if pg_catalog.pg_column_size(v_result) > v_max then
          return conveyor.render_too_large(p_where, pg_catalog.pg_column_size(v_result));
        end if;
      end loop;
    else
      for v_index, v_item in
        select a.i - 1, a.value
        from pg_catalog.jsonb_array_elements(p_value) with ordinality as a (value, i)
        where pg_catalog.strpos(a.value::text, '{{') > 0
      loop
        v_result := pg_catalog.jsonb_set(v_result, array[v_index::text], coalesce(conveyor.render(
          v_item, p_context, coalesce(p_where, '') || '[' || v_index || ']', p_item
        ), 'null'::jsonb));
        if pg_catalog.pg_column_size(v_result) > v_max then
          return conveyor.render_too_large(p_where, pg_catalog.pg_column_size(v_result));
        end if;
      end loop;
  end case;
  return v_result;
end;
$$;
