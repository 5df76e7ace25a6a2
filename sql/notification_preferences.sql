-- Notification preferences (docs/notifications.md#preferences): what a user wants per
-- category, and the one pure function that turns a preference, a notification's priority,
-- the user's time zone and the time into a decision per channel.
--
-- A preference (a row per user and category; '*' for every category the user has no row
-- for, merged field by field over the defaults):
--   {"channels": ["in_app", "email", "sms"], "frequency": "immediate" | "hourly_digest" |
--    "daily_digest" | "weekly_digest" | "never",
--    "quiet_hours": {"start": "22:00", "end": "07:00", "timezone"?: "<IANA>", "action"?: "hold" | "drop"},
--    "dnd_until": "<timestamp>", "email_unsubscribed": true | false,
--    "digest": {"time": "08:00", "day": "monday" .. "sunday"}}

-- The defaults of a user with no preferences.
create or replace function conveyor.default_notification_preferences()
returns jsonb
language sql
immutable
parallel safe
set search_path = ''
as $$
  select '{"channels": ["in_app", "email"], "frequency": "immediate", "quiet_hours": null, "dnd_until": null,
    "email_unsubscribed": false, "digest": {"time": "08:00", "day": "monday"}}'::jsonb;
$$;

-- ISO day numbers by name (digest.day).
create or replace function conveyor.notification_weekdays()
returns text[]
language sql
immutable
parallel safe
set search_path = ''
as $$
  select array['monday', 'tuesday', 'wednesday', 'thursday', 'friday', 'saturday', 'sunday'];
$$;

-- Whether p_value is a local time of day "HH:MM" (00:00 to 23:59).
create or replace function conveyor.is_local_time(p_value jsonb)
returns boolean
language sql
immutable
parallel safe
set search_path = ''
as $$
  select pg_catalog.jsonb_typeof(p_value) = 'string' and (p_value #>> '{}') ~ '^([01][0-9]|2[0-3]):[0-5][0-9]$';
$$;

-- The problems of a preference object, each `<path>.<field>: <what is wrong>`.
create or replace function conveyor.notification_preference_errors(p_prefs jsonb, p_path text)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_quiet jsonb := p_prefs -> 'quiet_hours';
  v_digest jsonb := p_prefs -> 'digest';
begin
  if jsonb_typeof(p_prefs) is distinct from 'object' then
    return next format('%s: expected an object of preferences (got %s)', p_path, coalesce(jsonb_typeof(p_prefs), 'nothing'));
    return;
  end if;
  if pg_catalog.octet_length(p_prefs::text) > 4096 then
    return next format('%s: %s bytes, a preference is at most 4096', p_path, pg_catalog.octet_length(p_prefs::text));
    return;
  end if;
  return query
  select format('%s.%s: unknown preference (expected channels, frequency, quiet_hours, dnd_until, '
    'email_unsubscribed, digest)', p_path, k)
  from jsonb_object_keys(p_prefs) as k
  where k not in ('channels', 'frequency', 'quiet_hours', 'dnd_until', 'email_unsubscribed', 'digest')
  order by k;
  if coalesce(p_prefs -> 'channels', 'null') <> 'null' then
    if jsonb_typeof(p_prefs -> 'channels') <> 'array' then
      return next format('%s.channels: expected a list of in_app, email, sms', p_path);
    else
      return query
      select format('%s.channels[%s]: unknown channel %s (expected in_app, email or sms)', p_path, e.n - 1, e.v::text)
      from jsonb_array_elements(p_prefs -> 'channels') with ordinality as e (v, n)
      where e.v not in ('"in_app"', '"email"', '"sms"')
      order by e.n;
      if jsonb_array_length(p_prefs -> 'channels')
        <> (select count(distinct e.v) from jsonb_array_elements(p_prefs -> 'channels') as e (v)) then
        return next format('%s.channels: a channel is listed twice', p_path);
      end if;
    end if;
  end if;
  if coalesce(p_prefs -> 'frequency', 'null') <> 'null' and (p_prefs -> 'frequency') not in (
    '"immediate"', '"hourly_digest"', '"daily_digest"', '"weekly_digest"', '"never"'
  ) then
    return next format('%s.frequency: unknown frequency %s (expected immediate, hourly_digest, daily_digest, '
      'weekly_digest or never)', p_path, (p_prefs -> 'frequency')::text);
  end if;
  if coalesce(v_quiet, 'null') <> 'null' then
    if jsonb_typeof(v_quiet) <> 'object' then
      return next format('%s.quiet_hours: expected {"start": "HH:MM", "end": "HH:MM", "timezone"?, "action"?} or null',
        p_path);
    else
      return query
      select format('%s.quiet_hours.%s: unknown key (expected start, end, timezone, action)', p_path, k)
      from jsonb_object_keys(v_quiet) as k where k not in ('start', 'end', 'timezone', 'action') order by k;
      if not conveyor.is_local_time(v_quiet -> 'start') then
        return next format('%s.quiet_hours.start: expected a local time "HH:MM" (got %s)', p_path,
          coalesce((v_quiet -> 'start')::text, 'nothing'));
      end if;
      if not conveyor.is_local_time(v_quiet -> 'end') then
        return next format('%s.quiet_hours.end: expected a local time "HH:MM" (got %s)', p_path,
          coalesce((v_quiet -> 'end')::text, 'nothing'));
      elsif (v_quiet -> 'end') = (v_quiet -> 'start') then
        return next format('%s.quiet_hours: start and end are both %s (an empty window)', p_path, (v_quiet -> 'end')::text);
      end if;
      if coalesce(v_quiet -> 'action', '"hold"') not in ('"hold"', '"drop"') then
        return next format('%s.quiet_hours.action: expected "hold" or "drop" (got %s)', p_path, (v_quiet -> 'action')::text);
      end if;
      if v_quiet ? 'timezone' then
        if jsonb_typeof(v_quiet -> 'timezone') <> 'string' then
          return next format('%s.quiet_hours.timezone: expected an IANA time zone name', p_path);
        else
          begin
            perform pg_catalog.timezone(v_quiet ->> 'timezone', pg_catalog.now());
          exception when invalid_parameter_value or feature_not_supported then
            return next format('%s.quiet_hours.timezone: unknown time zone "%s"', p_path, v_quiet ->> 'timezone');
          end;
        end if;
      end if;
    end if;
  end if;
  if coalesce(p_prefs -> 'dnd_until', 'null') <> 'null' then
    begin
      if jsonb_typeof(p_prefs -> 'dnd_until') <> 'string' then
        raise invalid_datetime_format;
      end if;
      perform (p_prefs ->> 'dnd_until')::timestamptz;
    exception when others then
      return next format('%s.dnd_until: expected a timestamp with a time zone (got %s)', p_path,
        (p_prefs -> 'dnd_until')::text);
    end;
  end if;
  if coalesce(p_prefs -> 'email_unsubscribed', 'null') <> 'null'
    and jsonb_typeof(p_prefs -> 'email_unsubscribed') <> 'boolean' then
    return next format('%s.email_unsubscribed: expected true or false', p_path);
  end if;
  if coalesce(v_digest, 'null') <> 'null' then
    if jsonb_typeof(v_digest) <> 'object' then
      return next format('%s.digest: expected {"time": "HH:MM", "day": "monday" .. "sunday"}', p_path);
    else
      return query
      select format('%s.digest.%s: unknown key (expected time, day)', p_path, k)
      from jsonb_object_keys(v_digest) as k where k not in ('time', 'day') order by k;
      if (v_digest ? 'time') and not conveyor.is_local_time(v_digest -> 'time') then
        return next format('%s.digest.time: expected a local time "HH:MM" (got %s)', p_path, (v_digest -> 'time')::text);
      end if;
      if (v_digest ? 'day') and not coalesce((v_digest ->> 'day') = any(conveyor.notification_weekdays()), false) then
        return next format('%s.digest.day: expected monday .. sunday (got %s)', p_path, (v_digest -> 'day')::text);
      end if;
    end if;
  end if;
end;
$$;

-- A user's preference for a category: the defaults, under the user's '*' row, under the
-- category's row (a field a row does not give, or gives as null, comes from below; a
-- digest's fields likewise).
create or replace function conveyor.effective_notification_preferences(
  p_tenant_id text, p_user_id text, p_category text
)
returns jsonb
language sql
stable
set search_path = ''
as $$
  select m.prefs || jsonb_build_object('digest', m.digest)
  from (
    select
      d.defaults || coalesce(jsonb_strip_nulls(s.preferences), '{}') || coalesce(jsonb_strip_nulls(c.preferences), '{}')
        as prefs,
      (d.defaults -> 'digest') || coalesce(s.preferences -> 'digest', '{}') || coalesce(c.preferences -> 'digest', '{}')
        as digest
    from (select conveyor.default_notification_preferences() as defaults) as d
    left join conveyor.notification_preferences as s
      on s.tenant_id = p_tenant_id and s.user_id = p_user_id and s.category = '*'
    left join conveyor.notification_preferences as c
      on c.tenant_id = p_tenant_id and c.user_id = p_user_id and c.category = p_category and p_category <> '*'
  ) as m;
$$;

-- The first instant after p_now at which a digest of p_frequency is due, in p_timezone:
-- the next local hour (hourly), the next local digest time (daily) or that time on the
-- digest day (weekly). DST-exact: a local time that does not exist is the first instant
-- after the gap, one that happens twice its first occurrence (conveyor.local_to_instant).
create or replace function conveyor.next_digest_at(
  p_frequency text, p_digest jsonb, p_timezone text, p_now timestamptz
)
returns timestamptz
language plpgsql
stable
set search_path = ''
as $$
declare
  v_local timestamp := p_now at time zone p_timezone;
  v_time time := coalesce(p_digest ->> 'time', '08:00')::time;
  v_day integer := coalesce(array_position(conveyor.notification_weekdays(), p_digest ->> 'day'), 1);
  v_at timestamptz;
begin
  if p_frequency = 'hourly_digest' then
    -- the local hour's start, by the offset in force now, plus an hour
    return (pg_catalog.date_trunc('hour', v_local) - (v_local - (p_now at time zone 'UTC'))) at time zone 'UTC'
      + interval '1 hour';
  end if;
  for v_offset in 0..8 loop
    continue when p_frequency = 'weekly_digest'
      and extract(isodow from v_local::date + v_offset) <> v_day;
    v_at := conveyor.local_to_instant((v_local::date + v_offset) + v_time, p_timezone);
    if v_at > p_now then
      return v_at;
    end if;
  end loop;
  return null;
end;
$$;

-- Whether the local time p_local is inside the quiet hours p_quiet ([start, end), across
-- midnight when start > end).
create or replace function conveyor.in_quiet_hours(p_quiet jsonb, p_local time)
returns boolean
language sql
immutable
parallel safe
set search_path = ''
as $$
  select case
    when (p_quiet ->> 'start')::time < (p_quiet ->> 'end')::time
      then p_local >= (p_quiet ->> 'start')::time and p_local < (p_quiet ->> 'end')::time
    else p_local >= (p_quiet ->> 'start')::time or p_local < (p_quiet ->> 'end')::time
  end;
$$;

-- The earliest instant at or after p_at that is outside the quiet hours p_quiet in
-- p_timezone: p_at itself, or the end of the quiet period it is in.
create or replace function conveyor.quiet_hours_release(p_quiet jsonb, p_timezone text, p_at timestamptz)
returns timestamptz
language plpgsql
stable
set search_path = ''
as $$
declare
  v_local timestamp := p_at at time zone p_timezone;
  v_end time := (p_quiet ->> 'end')::time;
begin
  if p_quiet is null or not conveyor.in_quiet_hours(p_quiet, v_local::time) then
    return p_at;
  end if;
  -- the end is later today (before it, or in a window that crossed midnight), else tomorrow
  return conveyor.local_to_instant(
    case when v_local::time < v_end then v_local::date + v_end else v_local::date + 1 + v_end end, p_timezone
  );
end;
$$;

-- THE preference rule, pure: what each channel does with a notification of p_priority for a
-- user whose preference is p_prefs (effective_notification_preferences, or the defaults),
-- in time zone p_timezone, at p_now. Per channel (in_app, email, sms):
--   {"action": "send"} | {"action": "hold", "until": T} | {"action": "digest", "frequency", "due_at": T}
--   | {"action": "drop", "reason": "..."} ("chosen": false too for a channel the user did not choose)
-- In order: a channel the user did not choose, or frequency never, is dropped; email when
-- unsubscribed is dropped; in-app is sent (quiet hours and do-not-disturb never hold it);
-- a critical notification is sent now; with a digest frequency email goes to the digest
-- due next (SMS is not digested: dropped); under do-not-disturb and in quiet hours it is
-- held until both are over (the later of dnd_until and the end of the quiet period it
-- then falls in), or dropped when quiet_hours.action is drop; otherwise sent.
create or replace function conveyor.resolve_notification_channels(
  p_prefs jsonb, p_category text, p_priority text, p_timezone text, p_now timestamptz
)
returns jsonb
language plpgsql
stable
set search_path = ''
as $$
declare
  v_prefs jsonb := conveyor.default_notification_preferences() || coalesce(jsonb_strip_nulls(p_prefs), '{}');
  v_frequency text := v_prefs ->> 'frequency';
  v_quiet jsonb := nullif(v_prefs -> 'quiet_hours', 'null');
  v_quiet_tz text := coalesce(v_quiet ->> 'timezone', p_timezone, 'UTC');
  v_dnd timestamptz := (v_prefs ->> 'dnd_until')::timestamptz;
  v_result jsonb := '{}';
  v_channel text;
  v_until timestamptz;
begin
  foreach v_channel in array array['in_app', 'email', 'sms'] loop
    v_result := v_result || jsonb_build_object(v_channel, case
      when not (v_prefs -> 'channels') ? v_channel
        then jsonb_build_object('action', 'drop', 'chosen', false, 'reason', format('the user has not chosen %s for %s',
          v_channel, coalesce(p_category, 'general')))
      when v_frequency = 'never'
        then jsonb_build_object('action', 'drop', 'reason', format('the user wants no notifications of %s',
          coalesce(p_category, 'general')))
      when v_channel = 'email' and coalesce((v_prefs ->> 'email_unsubscribed')::boolean, false)
        then jsonb_build_object('action', 'drop', 'reason', 'the user unsubscribed from email')
      when v_channel = 'in_app' or p_priority = 'critical'
        then jsonb_build_object('action', 'send')
      when v_frequency like '%\_digest' and v_channel = 'sms'
        then jsonb_build_object('action', 'drop', 'reason', format('sms is not sent in a digest (%s)', v_frequency))
      when v_frequency like '%\_digest'
        then jsonb_build_object('action', 'digest', 'frequency', v_frequency,
          'due_at', conveyor.next_digest_at(v_frequency, v_prefs -> 'digest', coalesce(p_timezone, 'UTC'), p_now))
      else null
    end);
    continue when v_result -> v_channel <> 'null';
    v_until := greatest(p_now, v_dnd);
    v_until := conveyor.quiet_hours_release(v_quiet, v_quiet_tz, v_until);
    v_result := v_result || jsonb_build_object(v_channel, case
      when v_until <= p_now then jsonb_build_object('action', 'send')
      when coalesce(v_quiet ->> 'action', 'hold') = 'drop'
        then jsonb_build_object('action', 'drop', 'reason', case
          when v_dnd > p_now then format('do not disturb until %s', v_dnd)
          else 'quiet hours' end)
      else jsonb_build_object('action', 'hold', 'until', v_until)
    end);
  end loop;
  return v_result;
end;
$$;

-- Sets a user's preferences for a category ('*': every category without its own row),
-- replacing what was set; checked first (each problem with its path), nothing half-set.
-- p_preferences null deletes the row (the defaults, or the '*' row, apply again).
create or replace function conveyor.set_notification_preferences(
  p_tenant_id text, p_user_id text, p_category text, p_preferences jsonb
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_problems text[];
begin
  perform conveyor.require_tenant(p_tenant_id);
  perform conveyor.require_notification_user(p_user_id);
  if p_category is null or btrim(p_category) = '' or length(p_category) > 100 then
    raise exception using errcode = '22023',
      message = 'p_category: a category of at most 100 characters (or ''*'' for all) is required';
  end if;
  if p_preferences is null then
    delete from conveyor.notification_preferences as p
    where p.tenant_id = p_tenant_id and p.user_id = p_user_id and p.category = p_category;
    return conveyor.effective_notification_preferences(p_tenant_id, p_user_id, p_category);
  end if;
  v_problems := array(select conveyor.notification_preference_errors(p_preferences, 'preferences'));
  if cardinality(v_problems) > 0 then
    raise exception using errcode = '22023',
      message = format('preferences of user %L for %L: %s problem(s): %s', p_user_id, p_category,
        cardinality(v_problems), v_problems[1]),
      detail = array_to_string(v_problems, e'\n');
  end if;
  insert into conveyor.notification_preferences as p (tenant_id, user_id, category, preferences)
  values (p_tenant_id, p_user_id, p_category, p_preferences)
  on conflict (tenant_id, user_id, category) do update set preferences = excluded.preferences, updated_at = now();
  return conveyor.effective_notification_preferences(p_tenant_id, p_user_id, p_category);
end;
$$;

-- A user's preferences: each category row as set ('*' first) and what applies to it, and
-- (category null) what applies to a category with no row of its own.
create or replace function conveyor.get_notification_preferences(p_tenant_id text, p_user_id text)
returns table (category text, preferences jsonb, effective jsonb)
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  perform conveyor.require_tenant(p_tenant_id);
  perform conveyor.require_notification_user(p_user_id);
  return query
  select p.category, p.preferences, conveyor.effective_notification_preferences(p_tenant_id, p_user_id, p.category)
  from conveyor.notification_preferences as p
  where p.tenant_id = p_tenant_id and p.user_id = p_user_id
  union all
  select null, null, conveyor.effective_notification_preferences(p_tenant_id, p_user_id, '*')
  order by 1 nulls last;
end;
$$;
