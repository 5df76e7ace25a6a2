-- Cron expressions: parsing and the next run, in a time zone, exactly.
--
-- Five fields (minute hour day-of-month month day-of-week) with lists, ranges, steps and
-- names (jan..dec, sun..sat; 7 is also Sunday), and the macros @hourly @daily @midnight
-- @weekly @monthly @yearly @annually. Day-of-month / day-of-week as in Vixie cron: when
-- either field starts with '*', a day must match both; otherwise either.
--
-- Time zones (IANA names) are handled the way people expect on DST days:
--   * a local time that does not exist (spring forward) runs once, at the first instant
--     after the gap (02:30 Europe/Berlin on the last Sunday of March runs at 03:00);
--   * a local time that happens twice (fall back) runs once, at its first occurrence.

-- One field: a sorted, distinct list of the values it allows.
create or replace function conveyor.cron_field(
  p_text text,
  p_field text,
  p_min integer,
  p_max integer,
  p_names text[] default null
) returns integer[]
language plpgsql
immutable
set search_path = ''
as $$
declare
  v_item text;
  v_range text;
  v_step integer;
  v_lo integer;
  v_hi integer;
  v_parts text[];
  v_values integer[] := '{}';
begin
  if p_text is null or p_text = '' then
    raise exception using errcode = '22023', message = format('cron %s field is empty', p_field);
  end if;
  foreach v_item in array pg_catalog.string_to_array(p_text, ',') loop
    if v_item = '' then
      raise exception using errcode = '22023',
        message = format('cron %s field "%s" has an empty list item', p_field, p_text);
    end if;
    v_parts := pg_catalog.string_to_array(v_item, '/');
    if pg_catalog.cardinality(v_parts) > 2 then
      raise exception using errcode = '22023',
        message = format('cron %s field: "%s" has more than one step', p_field, v_item);
    end if;
    v_range := v_parts[1];
    v_step := 1;
    if pg_catalog.cardinality(v_parts) = 2 then
      if v_parts[2] !~ '^[0-9]+$' or v_parts[2]::integer = 0 then
        raise exception using errcode = '22023',
          message = format('cron %s field: step "%s" in "%s" must be a positive number', p_field, v_parts[2], v_item);
      end if;
      v_step := v_parts[2]::integer;
    end if;
    if v_range = '*' then
      v_lo := p_min;
      v_hi := p_max;
    elsif v_range like '%-%' then
      v_lo := conveyor.cron_value(pg_catalog.split_part(v_range, '-', 1), p_field, p_min, p_max, p_names);
      v_hi := conveyor.cron_value(pg_catalog.split_part(v_range, '-', 2), p_field, p_min, p_max, p_names);
      if pg_catalog.cardinality(pg_catalog.string_to_array(v_range, '-')) <> 2 then
        raise exception using errcode = '22023',
          message = format('cron %s field: "%s" is not a range a-b', p_field, v_range);
      end if;
      -- "sun-sat" and "1-7" in day-of-week: 7 (Sunday) may close a range.
      if p_field = 'day-of-week' and v_hi = 0 and v_lo > 0 then
        v_hi := 7;
      end if;
      if v_lo > v_hi then
        raise exception using errcode = '22023',
          message = format('cron %s field: range "%s" runs backwards', p_field, v_range);
      end if;
    else
      v_lo := conveyor.cron_value(v_range, p_field, p_min, p_max, p_names);
      -- "5/15" means from 5 to the end in steps of 15 (Vixie cron).
      v_hi := case when pg_catalog.cardinality(v_parts) = 2 then p_max else v_lo end;
    end if;
    v_values := v_values || array(select pg_catalog.generate_series(v_lo, v_hi, v_step));
  end loop;
  if p_field = 'day-of-week' then
    -- 7 is Sunday too.
    v_values := array(select case when v = 7 then 0 else v end from pg_catalog.unnest(v_values) as v);
  end if;
  return array(select distinct v from pg_catalog.unnest(v_values) as v order by v);
end;
$$;

-- One value of a field: a number in range, or a name.
create or replace function conveyor.cron_value(
  p_text text,
  p_field text,
  p_min integer,
  p_max integer,
  p_names text[]
) returns integer
language plpgsql
immutable
set search_path = ''
as $$
declare
  v_value integer;
  v_max integer := case when p_field = 'day-of-week' then 7 else p_max end;
begin
  if p_text ~ '^[0-9]+$' then
    v_value := p_text::integer;
  elsif p_names is not null and pg_catalog.lower(p_text) = any(p_names) then
    v_value := pg_catalog.array_position(p_names, pg_catalog.lower(p_text)) - 1 + p_min;
  else
    raise exception using errcode = '22023',
      message = format('cron %s field: "%s" is not a number%s', p_field, p_text,
        case when p_names is not null then ' or a name (' || pg_catalog.array_to_string(p_names, ' ') || ')' else '' end);
  end if;
  if v_value < p_min or v_value > v_max then
    raise exception using errcode = '22023',
      message = format('cron %s field: %s is out of range %s-%s', p_field, v_value, p_min, v_max);
  end if;
  return v_value;
end;
$$;

drop function if exists conveyor.cron_parse(text);
create or replace function conveyor.cron_parse(
  p_expr text,
  out minutes integer[],
  out hours integer[],
  out days integer[],
  out months integer[],
  out weekdays integer[],
  out days_star boolean,
  out weekdays_star boolean
)
language plpgsql
immutable
set search_path = ''
as $$
declare
  v_expr text := pg_catalog.btrim(pg_catalog.lower(coalesce(p_expr, '')));
  v_fields text[];
begin
  v_expr := case v_expr
    when '@yearly' then '0 0 1 1 *'
    when '@annually' then '0 0 1 1 *'
    when '@monthly' then '0 0 1 * *'
    when '@weekly' then '0 0 * * 0'
    when '@daily' then '0 0 * * *'
    when '@midnight' then '0 0 * * *'
    when '@hourly' then '0 * * * *'
    else v_expr
  end;
  if v_expr like '@%' then
    raise exception using errcode = '22023',
      message = format('cron expression "%s": unknown macro (use @hourly @daily @weekly @monthly @yearly)', p_expr);
  end if;
  v_fields := pg_catalog.regexp_split_to_array(v_expr, '\s+');
  if v_expr = '' or pg_catalog.cardinality(v_fields) <> 5 then
    raise exception using errcode = '22023',
      message = format('cron expression "%s" must have 5 fields (minute hour day-of-month month day-of-week), not %s',
        p_expr, case when v_expr = '' then 0 else pg_catalog.cardinality(v_fields) end);
  end if;
  minutes := conveyor.cron_field(v_fields[1], 'minute', 0, 59);
  hours := conveyor.cron_field(v_fields[2], 'hour', 0, 23);
  days := conveyor.cron_field(v_fields[3], 'day-of-month', 1, 31);
  months := conveyor.cron_field(v_fields[4], 'month', 1, 12,
    array['jan', 'feb', 'mar', 'apr', 'may', 'jun', 'jul', 'aug', 'sep', 'oct', 'nov', 'dec']);
  weekdays := conveyor.cron_field(v_fields[5], 'day-of-week', 0, 6,
    array['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat']);
  days_star := v_fields[3] like '*%';
  weekdays_star := v_fields[5] like '*%';
  -- A day that no allowed month has (e.g. "30 2": February 30th) never fires.
  if days_star is false and weekdays_star is false then
    return;  -- either field may match: always satisfiable by the weekday
  end if;
  if not days_star and not exists (
    select from pg_catalog.unnest(months) as m, pg_catalog.unnest(days) as d
    where d <= case when m = 2 then 29 when m in (4, 6, 9, 11) then 30 else 31 end
  ) then
    raise exception using errcode = '22023',
      message = format('cron expression "%s" never fires: no allowed month has day %s', p_expr,
        pg_catalog.array_to_string(days, ','));
  end if;
end;
$$;

-- A cron expression's problems, empty when it is valid (for workflow validation).
create or replace function conveyor.cron_errors(p_expr text, p_path text)
returns setof text
language plpgsql
immutable
set search_path = ''
as $$
begin
  perform conveyor.cron_parse(p_expr);
exception when invalid_parameter_value then
  return next p_path || ': ' || sqlerrm;
end;
$$;

-- The instant a local wall-clock time names in a zone, by the rules above: the first
-- occurrence of a repeated time; the end of the gap for a time that does not exist.
create or replace function conveyor.local_to_instant(p_local timestamp, p_timezone text)
returns timestamptz
language plpgsql
stable
set search_path = ''
as $$
declare
  v_instant timestamptz := p_local at time zone p_timezone;
  v_probe timestamp := p_local;
begin
  if (v_instant at time zone p_timezone) = p_local then
    -- PostgreSQL resolves a repeated local time to its later occurrence; prefer the first.
    if ((v_instant - interval '1 hour') at time zone p_timezone) = p_local then
      return v_instant - interval '1 hour';
    elsif ((v_instant - interval '30 minutes') at time zone p_timezone) = p_local then
      return v_instant - interval '30 minutes';
    end if;
    return v_instant;
  end if;
  -- Inside a gap: the first local minute after it that exists.
  for i in 1..180 loop
    v_probe := v_probe + interval '1 minute';
    if ((v_probe at time zone p_timezone) at time zone p_timezone) = v_probe then
      return v_probe at time zone p_timezone;
    end if;
  end loop;
  return v_instant;
end;
$$;

-- The first run strictly after p_after, or null if the expression never fires again
-- within 8 years.
create or replace function conveyor.cron_next(
  p_expr text,
  p_after timestamptz,
  p_timezone text default 'UTC'
) returns timestamptz
language plpgsql
stable
set search_path = ''
as $$
declare
  c record;
  v_start timestamp;
  v_day date;
  v_last date;
  v_first_day boolean := true;
  v_day_ok boolean;
  v_instant timestamptz;
  v_hour integer;
  v_minute integer;
begin
  -- (not pg_timezone_names: that view reads the whole zone database, ~40 ms per call)
  if p_timezone is null or not conveyor.timezone_is_valid(p_timezone) then
    raise exception using errcode = '22023',
      message = format('unknown time zone "%s" (use an IANA name such as Europe/Berlin)', p_timezone);
  end if;
  c := conveyor.cron_parse(p_expr);
  v_start := pg_catalog.date_trunc('minute', p_after at time zone p_timezone) + interval '1 minute';
  -- After the repeated hour of a fall-back day began, wall-clock times up to an hour
  -- earlier may still lie ahead as instants: start the scan an hour back.
  v_start := v_start - interval '1 hour';
  v_day := v_start::date;
  v_last := v_day + interval '8 years';
  while v_day <= v_last loop
    if not (pg_catalog.date_part('month', v_day)::integer = any(c.months)) then
      -- Jump to the first day of the next month.
      v_day := (pg_catalog.date_trunc('month', v_day) + interval '1 month')::date;
      v_first_day := false;
      continue;
    end if;
    if c.days_star or c.weekdays_star then
      v_day_ok := pg_catalog.date_part('day', v_day)::integer = any(c.days)
        and pg_catalog.date_part('dow', v_day)::integer = any(c.weekdays);
    else
      v_day_ok := pg_catalog.date_part('day', v_day)::integer = any(c.days)
        or pg_catalog.date_part('dow', v_day)::integer = any(c.weekdays);
    end if;
    if v_day_ok then
      foreach v_hour in array c.hours loop
        continue when v_first_day and v_hour < pg_catalog.date_part('hour', v_start);
        foreach v_minute in array c.minutes loop
          continue when v_first_day and v_hour = pg_catalog.date_part('hour', v_start)
            and v_minute < pg_catalog.date_part('minute', v_start);
          v_instant := conveyor.local_to_instant(
            v_day + pg_catalog.make_interval(hours => v_hour, mins => v_minute), p_timezone);
          if v_instant > p_after then
            return v_instant;
          end if;
        end loop;
      end loop;
    end if;
    v_day := v_day + 1;
    v_first_day := false;
  end loop;
  return null;
end;
$$;
