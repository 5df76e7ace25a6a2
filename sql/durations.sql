-- Durations and time windows: pure functions used by delays, retries, conditions
-- (within_last / within_next) and templates (`add`).
--
-- A duration is one or more `<number><unit>` parts, with or without spaces or commas
-- between them: '500ms' '90s' '5m' '2h' '3d' '1w' '1h30m' '7 days' '1 day 2 hours'.
-- Units (case-insensitive): ms msec millisecond(s); s sec(s) second(s); m min(s)
-- minute(s); h hr(s) hour(s); d day(s); w week(s); mon month(s); y year(s).
-- Numbers may have a fraction ('1.5h'). Signs are not accepted: durations are >= 0.

-- Bounds (docs/limits.md, "Durations, timestamps and timeouts"): the longest duration
-- the engine accepts anywhere (delays, waits, execution timeouts, retry delays, date
-- trigger offsets; a delay's `until` at most this far ahead), and the longest an action
-- may take (a step's `timeout`, webhook.send's `with.timeout`).
-- The interval value of setting conveyor.<p_name>, or p_default when it is unset or '';
-- a value that is not a positive duration is a configuration error, named as such.
create or replace function conveyor.duration_setting(p_name text, p_default interval)
returns interval
language plpgsql
stable
set search_path = ''
as $$
declare
  v_text text := nullif(pg_catalog.current_setting('conveyor.' || p_name, true), '');
  v_value interval;
begin
  if v_text is null then
    return p_default;
  end if;
  v_value := coalesce(conveyor.duration_or_null(v_text), v_text::interval);
  if v_value <= interval '0' then
    raise invalid_datetime_format;
  end if;
  return v_value;
exception
  when data_exception then
    raise exception using
      errcode = '22023',
      message = pg_catalog.format('setting conveyor.%s = %L is not a positive duration', p_name, v_text),
      hint = pg_catalog.format('reset it (the default is %s) or set a duration such as 1 year', p_default);
end;
$$;

create or replace function conveyor.max_duration()
returns interval
language sql
stable
set search_path = ''
as $$
  select conveyor.duration_setting('max_duration', interval '1 year');
$$;

create or replace function conveyor.max_action_timeout()
returns interval
language sql
stable
set search_path = ''
as $$
  select conveyor.duration_setting('max_action_timeout', interval '1 hour');
$$;

-- A duration as a text the parser reads back, for messages: '1 year', '1 hour 30 minutes'.
create or replace function conveyor.duration_text(p_duration interval)
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
  select coalesce(
    pg_catalog.string_agg(
      pg_catalog.format('%s %s%s', pg_catalog.trim_scale(v.n), v.unit, case when v.n = 1 then '' else 's' end),
      ' ' order by v.ord
    ),
    '0 seconds'
  )
  from (values
    (1, pg_catalog.date_part('year', p_duration)::numeric, 'year'),
    (2, pg_catalog.date_part('month', p_duration)::numeric, 'month'),
    (3, pg_catalog.date_part('day', p_duration)::numeric, 'day'),
    (4, pg_catalog.date_part('hour', p_duration)::numeric, 'hour'),
    (5, pg_catalog.date_part('minute', p_duration)::numeric, 'minute'),
    (6, pg_catalog.round(pg_catalog.date_part('second', p_duration)::numeric, 3), 'second')
  ) as v (ord, n, unit)
  where v.n <> 0;
$$;

-- A duration text's length in seconds and its interval. seconds is numeric, so it never
-- overflows (a month counts 30 days and a year 365.25, as extract(epoch) does); both are
-- null when the text is not a duration. value is also null past 10,000 years, where
-- interval arithmetic would overflow ('999999999 years'); no limit comes near it.
create or replace function conveyor.duration_parse(p_text text, out seconds numeric, out value interval)
language sql
immutable
strict
parallel safe
set search_path = ''
as $$
  with parts as (
    select
      m[1]::numeric as amount,
      case lower(m[2])
        when 'ms' then interval '1 millisecond'
        when 'msec' then interval '1 millisecond'
        when 'msecs' then interval '1 millisecond'
        when 'millisecond' then interval '1 millisecond'
        when 'milliseconds' then interval '1 millisecond'
        when 's' then interval '1 second'
        when 'sec' then interval '1 second'
        when 'secs' then interval '1 second'
        when 'second' then interval '1 second'
        when 'seconds' then interval '1 second'
        when 'm' then interval '1 minute'
        when 'min' then interval '1 minute'
        when 'mins' then interval '1 minute'
        when 'minute' then interval '1 minute'
        when 'minutes' then interval '1 minute'
        when 'h' then interval '1 hour'
        when 'hr' then interval '1 hour'
        when 'hrs' then interval '1 hour'
        when 'hour' then interval '1 hour'
        when 'hours' then interval '1 hour'
        when 'd' then interval '1 day'
        when 'day' then interval '1 day'
        when 'days' then interval '1 day'
        when 'w' then interval '1 week'
        when 'week' then interval '1 week'
        when 'weeks' then interval '1 week'
        when 'mon' then interval '1 month'
        when 'month' then interval '1 month'
        when 'months' then interval '1 month'
        when 'y' then interval '1 year'
        when 'year' then interval '1 year'
        when 'years' then interval '1 year'
      end as unit
    from pg_catalog.regexp_matches(p_text, '([0-9]{1,9}(?:\.[0-9]{1,9})?)\s*([A-Za-z]+)', 'g') as m
  ),

  total as (
    select case
      when p_text ~ '^\s*([0-9]{1,9}(\.[0-9]{1,9})?\s*[A-Za-z]+[\s,]*)+$' and pg_catalog.count(*) = pg_catalog.count(p.unit)
        then pg_catalog.sum(p.amount * pg_catalog.date_part('epoch', p.unit)::numeric)
    end as seconds
    from parts as p
  )

  -- the scalar subquery runs only when its branch is taken, so it never overflows
  select t.seconds, case when t.seconds <= 315576000000 then (select pg_catalog.sum(p.amount * p.unit) from parts as p) end
  from total as t;
$$;

-- The duration, or null when the text is not a valid duration (used by validators and
-- by conditions and templates, which must never raise on a bad value).
create or replace function conveyor.duration_or_null(p_text text) returns interval
language sql
immutable
strict
parallel safe
set search_path = ''
as $$
  select (conveyor.duration_parse(p_text)).value;
$$;

-- The duration, at most p_max; raises 22023 naming the text when it is not a valid
-- duration or is longer.
create or replace function conveyor.parse_duration(p_text text, p_max interval) returns interval
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
declare
  v_seconds numeric;
  v_result interval;
begin
  if p_text is null then
    return null;
  end if;
  select d.seconds, d.value into v_seconds, v_result from conveyor.duration_parse(p_text) as d;
  if v_seconds is null then
    raise exception using
      errcode = '22023',
      message = pg_catalog.format('invalid duration "%s"', p_text),
      detail = 'A duration is a non-negative number followed by a unit, e.g. 500ms, 90s, 5m, 2h, 3d, 1w, 7 days.',
      hint = 'Units: ms, s, m, h, d, w (or their long names: seconds, minutes, hours, days, weeks, months, years).';
  end if;
  if v_result is null or v_seconds > pg_catalog.date_part('epoch', p_max)::numeric then
    raise exception using
      errcode = '22023',
      message = pg_catalog.format('duration "%s" exceeds the maximum %s', p_text, conveyor.duration_text(p_max)),
      hint = 'The engine accepts durations up to conveyor.max_duration (default 1 year), action timeouts up to '
      'conveyor.max_action_timeout (default 1 hour); see docs/limits.md.';
  end if;
  return v_result;
end;
$$;

-- The duration, at most conveyor.max_duration: what the engine uses at run time (delays,
-- waits, retries), so a value no validator saw (an older version's) fails its step.
create or replace function conveyor.parse_duration(p_text text) returns interval
language sql
stable
parallel safe
set search_path = ''
as $$
  select conveyor.parse_duration(p_text, conveyor.max_duration());
$$;

-- Why a delay's `until` cannot be used, or null: it must be an ISO 8601 timestamp (or
-- anything timestamptz reads), not before 1970 and at most conveyor.max_duration ahead.
create or replace function conveyor.until_error(p_text text, p_now timestamptz default pg_catalog.now())
returns text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_at timestamptz;
begin
  v_at := p_text::timestamptz;
  if not pg_catalog.isfinite(v_at) or v_at < timestamptz '1970-01-01 00:00:00+00' then
    return pg_catalog.format('timestamp "%s" is out of range (from 1970-01-01 to %s ahead)', p_text,
      conveyor.duration_text(conveyor.max_duration()));
  elsif v_at > p_now + conveyor.max_duration() then
    return pg_catalog.format('timestamp "%s" is more than the maximum %s ahead (setting conveyor.max_duration)',
      p_text, conveyor.duration_text(conveyor.max_duration()));
  end if;
  return null;
exception
  when data_exception then
    return pg_catalog.format('invalid timestamp "%s"', p_text);
end;
$$;

-- A delay's `until` as a timestamp; raises 22023 with until_error's message otherwise
-- (the interpreter's parse of a rendered `until`, so a templated value out of range fails
-- its step).
create or replace function conveyor.parse_until(p_text text, p_now timestamptz default pg_catalog.now())
returns timestamptz
language plpgsql
stable
set search_path = ''
as $$
declare
  v_problem text := conveyor.until_error(p_text, p_now);
begin
  if v_problem is not null then
    raise exception using
      errcode = '22023',
      message = v_problem,
      hint = 'until is an ISO 8601 timestamp such as 2026-12-24T09:00:00+01:00.';
  end if;
  return p_text::timestamptz;
end;
$$;

-- Time windows: {"days": ["mon", ...], "hours": "09:00-17:00", "timezone": "Europe/Berlin"},
-- every key optional (all days, all day, UTC). `hours` is start-end in local time, end
-- exclusive; a window whose end is not after its start crosses midnight and belongs to
-- the day it starts on ("fri" + "22:00-06:00" is Friday 22:00 to Saturday 06:00); equal
-- start and end mean 24 hours from the start.

-- Problems with a window document, as `<path>: <what is wrong>` messages.
create or replace function conveyor.window_errors(p_window jsonb, p_path text) returns setof text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_tz text := p_window ->> 'timezone';
begin
  if p_window is null then
    return;
  end if;
  if pg_catalog.jsonb_typeof(p_window) <> 'object' then
    return next p_path || ': a window must be an object with optional "days", "hours" and "timezone"';
    return;
  end if;
  return query
  select pg_catalog.format('%s.%s: unknown key (expected days, hours, timezone)', p_path, k)
  from pg_catalog.jsonb_object_keys(p_window) as k
  where k not in ('days', 'hours', 'timezone');
  if p_window ? 'days' then
    if pg_catalog.jsonb_typeof(p_window -> 'days') <> 'array' or pg_catalog.jsonb_array_length(p_window -> 'days') = 0 then
      return next p_path || '.days: must be a non-empty array of mon, tue, wed, thu, fri, sat, sun';
    else
      return query
      select pg_catalog.format('%s.days[%s]: unknown day %s (expected mon, tue, wed, thu, fri, sat, sun)', p_path, i - 1, d)
      from pg_catalog.jsonb_array_elements(p_window -> 'days') with ordinality as e (d, i)
      where pg_catalog.jsonb_typeof(d) <> 'string'
        or pg_catalog.lower(d #>> '{}') not in ('mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun');
    end if;
  end if;
  if p_window ? 'hours' and (
    pg_catalog.jsonb_typeof(p_window -> 'hours') <> 'string'
    or (p_window ->> 'hours') !~ '^\s*([01]?[0-9]|2[0-3]):[0-5][0-9]\s*-\s*(([01]?[0-9]|2[0-3]):[0-5][0-9]|24:00)\s*$'
  ) then
    return next pg_catalog.format('%s.hours: expected "HH:MM-HH:MM" (e.g. "09:00-17:00"), got %s', p_path, p_window -> 'hours');
  end if;
  if p_window ? 'timezone' then
    if pg_catalog.jsonb_typeof(p_window -> 'timezone') <> 'string' then
      return next p_path || '.timezone: must be a string (an IANA time zone such as "Europe/Berlin")';
    elsif v_tz !~ '\{\{' then
      begin
        perform pg_catalog.timezone(v_tz, pg_catalog.now());
      exception when invalid_parameter_value or feature_not_supported then
        return next pg_catalog.format('%s.timezone: unknown time zone "%s"', p_path, v_tz);
      end;
    end if;
  end if;
end;
$$;

-- The earliest instant >= p_from inside the window. Computed in local time and
-- converted back, DST-correct: a local start time that does not exist (spring forward)
-- starts the window at the first instant after the gap; a local time that exists twice
-- (fall back) is matched at whichever occurrence comes first after p_from.
create or replace function conveyor.next_window_start(p_from timestamptz, p_window jsonb) returns timestamptz
language plpgsql
stable
parallel safe
set search_path = ''
as $$
declare
  v_tz text := coalesce(p_window ->> 'timezone', 'UTC');
  v_local timestamp;
  v_days int[];
  v_start interval := interval '0';
  v_length interval := interval '1 day';
  v_hours text[];
  v_end interval;
  v_problem text;
  v_days_json jsonb;
begin
  if p_from is null then
    return null;
  end if;
  if p_window is null or p_window = '{}'::jsonb then
    return p_from;
  end if;
  v_days_json := pg_catalog.lower((p_window -> 'days')::text)::jsonb;
  if pg_catalog.jsonb_typeof(p_window) <> 'object' or not (
    p_window - array['days', 'hours', 'timezone'] = '{}'::jsonb
    and (v_days_json is null or (
      pg_catalog.jsonb_typeof(v_days_json) = 'array' and v_days_json <> '[]'::jsonb
      and v_days_json <@ '["mon", "tue", "wed", "thu", "fri", "sat", "sun"]'::jsonb
    ))
    and coalesce((p_window ->> 'hours') ~ '^\s*([01]?[0-9]|2[0-3]):[0-5][0-9]\s*-\s*(([01]?[0-9]|2[0-3]):[0-5][0-9]|24:00)\s*$', true)
    and coalesce(pg_catalog.jsonb_typeof(p_window -> 'hours'), 'string') = 'string'
    and coalesce(pg_catalog.jsonb_typeof(p_window -> 'timezone'), 'string') = 'string'
    and conveyor.timezone_is_valid(v_tz)
  ) then
    select e into v_problem from conveyor.window_errors(p_window, 'window') as e limit 1;
    raise exception using
      errcode = '22023',
      message = 'invalid time window: ' || coalesce(v_problem, 'window: not a valid window'),
      detail = pg_catalog.format('window: %s', p_window),
      hint = 'A window is {"days": ["mon", ...], "hours": "HH:MM-HH:MM", "timezone": "<IANA name>"}.';
  end if;
  v_local := pg_catalog.timezone(v_tz, p_from);
  if v_days_json is not null then
    v_days := pg_catalog.array_remove(array[
      case when v_days_json ? 'sun' then 0 end, case when v_days_json ? 'mon' then 1 end,
      case when v_days_json ? 'tue' then 2 end, case when v_days_json ? 'wed' then 3 end,
      case when v_days_json ? 'thu' then 4 end, case when v_days_json ? 'fri' then 5 end,
      case when v_days_json ? 'sat' then 6 end
    ], null);
  end if;
  if p_window ? 'hours' then
    v_hours := pg_catalog.regexp_match(p_window ->> 'hours', '^\s*([0-9:]+)\s*-\s*([0-9:]+)\s*$');
    v_start := v_hours[1]::interval;
    v_end := v_hours[2]::interval;
    v_length := case when v_end > v_start then v_end - v_start else v_end - v_start + interval '1 day' end;
  end if;
  return (
    with windows as (
      -- local window [starts_at, starts_at + length) for each day that may matter
      select day + v_start as starts_at, day + v_start + v_length as ends_at
      from pg_catalog.generate_series(
        v_local::date::timestamp - interval '1 day', v_local::date::timestamp + interval '8 days', interval '1 day'
      ) as day
      where v_days is null or pg_catalog.date_part('dow', day)::int = any(v_days)
    ),
    candidates as (
      -- p_from itself when its local time is inside a window
      select p_from as at
      from windows as w
      where v_local >= w.starts_at and v_local < w.ends_at
      union all
      -- each window start: every instant whose local time is the start (two on fall-back
      -- day, computed from the UTC offsets a day before and after), or, when the start
      -- does not exist (spring-forward gap), the first instant after the gap
      select coalesce(exact.at, gap.at)
      from windows as w
      cross join lateral (
        select
          pg_catalog.timezone('UTC', w.starts_at) - (
            pg_catalog.timezone(v_tz, pg_catalog.timezone('UTC', w.starts_at) - interval '1 day')
            - (w.starts_at - interval '1 day')
          ) as before_at,
          pg_catalog.timezone('UTC', w.starts_at) - (
            pg_catalog.timezone(v_tz, pg_catalog.timezone('UTC', w.starts_at) + interval '1 day')
            - (w.starts_at + interval '1 day')
          ) as after_at
      ) as o
      cross join lateral (
        select pg_catalog.min(t) as at
        from (values (o.before_at), (o.after_at)) as c (t)
        where pg_catalog.timezone(v_tz, t) = w.starts_at and t >= p_from
      ) as exact
      left join lateral (
        select pg_catalog.min(t) as at
        from pg_catalog.generate_series(
          least(o.before_at, o.after_at), greatest(o.before_at, o.after_at), interval '1 minute'
        ) as t
        where pg_catalog.timezone(v_tz, o.before_at) <> w.starts_at
          and pg_catalog.timezone(v_tz, o.after_at) <> w.starts_at
          and pg_catalog.timezone(v_tz, t) >= w.starts_at
          and pg_catalog.timezone(v_tz, t) < w.ends_at
          and t >= p_from
      ) as gap on true
      union all
      -- a fall-back transition turning the clock back into a window (its start passed an
      -- hour ago, its local times come round again): the instant of the transition, found
      -- by a minute scan only on a day whose UTC offset changes
      select tr.at
      from pg_catalog.generate_series(
        v_local::date::timestamp - interval '1 day', v_local::date::timestamp + interval '8 days', interval '1 day'
      ) as d (day)
      cross join lateral (
        select t as at
        from pg_catalog.generate_series(
          pg_catalog.timezone('UTC', d.day), pg_catalog.timezone('UTC', d.day) + interval '1 day', interval '1 minute'
        ) as t
        where pg_catalog.timezone(v_tz, pg_catalog.timezone('UTC', d.day)) - d.day
          <> pg_catalog.timezone(v_tz, pg_catalog.timezone('UTC', d.day) + interval '1 day') - (d.day + interval '1 day')
          and pg_catalog.timezone(v_tz, t) < pg_catalog.timezone(v_tz, t - interval '1 minute')
      ) as tr
      where tr.at >= p_from and exists (
        select from windows as w
        where pg_catalog.timezone(v_tz, tr.at) >= w.starts_at and pg_catalog.timezone(v_tz, tr.at) < w.ends_at
      )
    )
    select pg_catalog.min(at) from candidates
  );
end;
$$;

-- Whether p_tz names a time zone PostgreSQL knows (IANA names, UTC, offsets).
create or replace function conveyor.timezone_is_valid(p_tz text) returns boolean
language plpgsql
stable
parallel safe
set search_path = ''
as $$
begin
  perform pg_catalog.timezone(p_tz, pg_catalog.now());
  return true;
exception when invalid_parameter_value or feature_not_supported then
  return false;
end;
$$;

-- A JSON string holding an ISO 8601 date or timestamp ('2026-05-01', '2026-05-01T09:30',
-- '2026-05-01 09:30:00.5+02:00', '...Z') as a UTC timestamp; a value without an offset is
-- taken as UTC. Null for anything else (other types, other formats, impossible dates),
-- never an error, so conditions can compare any value safely.
create or replace function conveyor.json_timestamp(p_value jsonb) returns timestamp
language plpgsql
stable
strict
parallel safe
set search_path = ''
as $$
declare
  m text[];
begin
  if pg_catalog.jsonb_typeof(p_value) <> 'string' then
    return null;
  end if;
  m := pg_catalog.regexp_match(
    p_value #>> '{}',
    '^([0-9]{4})-([0-9]{2})-([0-9]{2})(?:[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.[0-9]{1,6})?)?(Z|z|[+-]([0-9]{2})(?::?([0-9]{2}))?)?)?$'
  );
  return case
    when m is null then null
    when m[1]::int = 0 or m[2]::int not between 1 and 12 or m[3]::int < 1 then null
    when m[3]::int > pg_catalog.date_part('day', pg_catalog.make_date(m[1]::int, m[2]::int, 1) + interval '1 month - 1 day') then null
    when coalesce(m[4]::int, 0) > 23 or coalesce(m[5]::int, 0) > 59 or coalesce(m[6]::int, 0) > 59 then null
    when m[7] is null then (p_value #>> '{}')::timestamp
    when m[7] in ('Z', 'z') then pg_catalog.rtrim(p_value #>> '{}', 'Zz')::timestamp
    when m[8]::int > 15 or coalesce(m[9]::int, 0) > 59 then null
    else pg_catalog.timezone('UTC', (p_value #>> '{}')::timestamptz)
  end;
end;
$$;
