-- Engine-wide limits (docs/limits.md): how a limit's setting is read, and which errors
-- are a fault of the data being worked on rather than of the moment.

-- The integer value of setting conveyor.<p_name>, or p_default when it is unset or ''.
-- A value that is not a positive integer is a configuration error, named as such.
create or replace function conveyor.limit_setting(p_name text, p_default bigint)
returns bigint
language plpgsql
stable
set search_path = ''
as $$
declare
  v_text text := nullif(pg_catalog.current_setting('conveyor.' || p_name, true), '');
begin
  if v_text is null then
    return p_default;
  end if;
  if v_text !~ '^\s*[0-9]{1,18}\s*$' or v_text::bigint < 1 then
    raise exception using
      errcode = '22023',
      message = format('setting conveyor.%s = %L is not a positive integer', p_name, v_text),
      hint = format('reset it (the default is %s) or set a positive whole number', p_default);
  end if;
  return v_text::bigint;
end;
$$;

-- Whether an error raised while working on some data says nothing about that data: the
-- transaction met another one (serialization failure, deadlock, lock timeout), the server
-- is short of a resource or shutting down, or the statement was cancelled. Such errors
-- are raised on (the work is retried whole); every other error is the data's own and is
-- contained to the event, execution or step it belongs to.
create or replace function conveyor.error_is_transient(p_sqlstate text)
returns boolean
language sql
immutable
parallel safe
set search_path = ''
as $$
  select left(p_sqlstate, 2) in ('08', '40', '53', '57', '58', 'XX') or p_sqlstate = '55P03';
$$;
