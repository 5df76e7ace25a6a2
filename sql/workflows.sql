-- Workflow definitions: validate a JSON document, publish it as an immutable version,
-- compile its step graph into conveyor.workflow_steps rows, and keep its subscription.
--
-- The document format is described in docs/workflow-format.md. In short:
--   {"slug", "name", "description"?, "category"?, "tags"?, "active"?,
--    "trigger": {"event", "source"?, "filter"?, "condition"?} | {"manual": true}
--               | {"schedule": {...}} | {"webhook": {...}} | {"date": {...}},
--    "settings"?: {...}, "steps": [{"id", <one kind key>, ...routing keys}, ...]}
--
-- validate_workflow() reports every problem at once, in document order, as
-- "<path>: <message>" (the path names the offending field: steps[2].with.to).
-- publish() stores nothing unless the whole document is valid.
--
-- The validation helpers (document_*) are plain functions over jsonb, one per part of
-- the document; they are called once per publish, not on any hot path, so clarity wins
-- over cleverness here. The compiled rows are what the interpreter reads at run time.

-- "<path>.<key>", or just "<key>" at the top of the document.
create or replace function conveyor.document_path(p_path text, p_key text)
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
  select case when coalesce(p_path, '') = '' then p_key else p_path || '.' || p_key end;
$$;

-- Missing required keys (in the order given), then unknown keys (alphabetical).
-- The caller has checked that p_object is an object.
create or replace function conveyor.document_key_errors(
  p_object jsonb,
  p_path text,
  p_required text[],
  p_optional text[] default '{}'
)
returns setof text
language sql
immutable
parallel safe
set search_path = ''
as $$
  select e.message
  from (
    select 1 as grp, r.ord, format('%s: required key is missing', conveyor.document_path(p_path, r.k)) as message
    from unnest(p_required) with ordinality as r (k, ord)
    where not p_object ? r.k
    union all
    select 2, row_number() over (order by k.k), format(
      '%s: unknown key (expected one of: %s)',
      conveyor.document_path(p_path, k.k), array_to_string(p_required || p_optional, ', ')
    )
    from jsonb_object_keys(p_object) as k (k)
    where k.k <> all(p_required || p_optional)
  ) as e
  order by e.grp, e.ord;
$$;

-- A positive integer (1 .. p_max), or a message.
create or replace function conveyor.document_integer_error(
  p_value jsonb,
  p_path text,
  p_max integer default 2147483647
)
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
  select case
    when jsonb_typeof(p_value) is distinct from 'number' then
      format('%s: expected an integer from 1 to %s (got %s)', p_path, p_max, coalesce(p_value::text, 'nothing'))
    when p_value::numeric = trunc(p_value::numeric) and p_value::numeric between 1 and p_max then null
    else format('%s: expected an integer from 1 to %s (got %s)', p_path, p_max, p_value::text)
  end;
$$;

-- A literal duration ("30s", "5m", "2h", "3d", "1 day 2 hours") of at most p_max (the
-- setting p_setting), or a message.
drop function if exists conveyor.document_duration_error(jsonb, text);
create or replace function conveyor.document_duration_error(
  p_value jsonb,
  p_path text,
  p_max interval default conveyor.max_duration(),
  p_setting text default 'conveyor.max_duration'
)
returns text
language sql
stable
set search_path = ''
as $$
  select case
    when jsonb_typeof(p_value) is distinct from 'string' then
      format('%s: expected a duration such as "30s", "5m", "2h" or "3d" (got %s)', p_path, p_value::text)
    when d.seconds is null then format('%s: invalid duration "%s"', p_path, p_value #>> '{}')
    when d.value is null or d.seconds > extract(epoch from p_max) then
      format('%s: duration "%s" exceeds the maximum %s (setting %s)', p_path, p_value #>> '{}',
        conveyor.duration_text(p_max), p_setting)
  end
  from conveyor.duration_parse(case when jsonb_typeof(p_value) = 'string' then p_value #>> '{}' end) as d;
$$;

-- An IANA time zone name, or a message.
create or replace function conveyor.document_timezone_error(p_value jsonb, p_path text)
returns text
language plpgsql
stable
set search_path = ''
as $$
begin
  if jsonb_typeof(p_value) is distinct from 'string' then
    return format('%s: expected a time zone name such as "Europe/Berlin" (got %s)', p_path, p_value::text);
  end if;
  perform pg_catalog.timezone(p_value #>> '{}', pg_catalog.now());
  return null;
exception
  when invalid_parameter_value or feature_not_supported then
    return format('%s: unknown time zone "%s"', p_path, p_value #>> '{}');
end;
$$;

-- A literal timestamp ("2026-12-24T09:00:00+01:00") in conveyor.until_error's range, or a
-- message.
create or replace function conveyor.document_timestamp_error(p_value jsonb, p_path text)
returns text
language sql
stable
set search_path = ''
as $$
  select case
    when jsonb_typeof(p_value) is distinct from 'string' then
      format('%s: expected a timestamp or a template (got %s)', p_path, p_value::text)
    else p_path || ': ' || conveyor.until_error(p_value #>> '{}')
  end;
$$;

-- The roots a step's templates and conditions may name: conveyor.template_default_roots,
-- where `item` exists only inside transform map templates and filter conditions.
create or replace function conveyor.step_template_roots(p_item boolean) returns text[]
language sql
immutable
set search_path = ''
as $$
  select case
    when p_item then conveyor.template_default_roots()
    else pg_catalog.array_remove(conveyor.template_default_roots(), 'item')
  end;
$$;

-- Template problems in a value (any JSON; every string in it is a template), and
-- references to steps that the workflow does not have ({{steps.nope.output}}).
-- Templates in steps see the roots trigger, steps, vars, execution, tenant, now, and
-- item inside transform map templates and filter conditions.
create or replace function conveyor.document_template_errors(
  p_value jsonb,
  p_path text,
  p_step_ids jsonb,
  p_item boolean default false
)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
begin
  return query
  select t.message
  from conveyor.template_errors(p_value, p_path, conveyor.step_template_roots(p_item)) as t (message);

  return query
  select format('%s: template refers to unknown step "%s"', p_path, r.step_id)
  from (select distinct s.step_id from conveyor.template_step_refs(p_value) as s (step_id)) as r
  where not p_step_ids ? r.step_id
  order by r.step_id;
end;
$$;

-- Condition problems (conveyor.condition_errors) and references to unknown steps.
create or replace function conveyor.document_condition_errors(
  p_condition jsonb,
  p_path text,
  p_step_ids jsonb,
  p_item boolean default false
)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
begin
  return query
  select c.message
  from conveyor.condition_errors(p_condition, p_path, conveyor.step_template_roots(p_item)) as c (message);

  -- Step ids in templates, and in plain field paths ({"field": "steps.check.output.ok"}).
  return query
  select format('%s: refers to unknown step "%s"', p_path, r.step_id)
  from (
    select s.step_id from conveyor.template_step_refs(p_condition) as s (step_id)
    union
    select substring(f.field #>> '{}' from '^steps\.([^.]+)')
    from jsonb_path_query(p_condition, 'lax $.**.field') as f (field)
    where jsonb_typeof(f.field) = 'string' and strpos(f.field #>> '{}', '{{') = 0
  ) as r
  where not p_step_ids ? r.step_id
  order by r.step_id;
end;
$$;

-- A step target (next, then, else, goto, ...): null (end) or an existing step id.
create or replace function conveyor.document_target_error(p_value jsonb, p_path text, p_step_ids jsonb)
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
  select case
    when p_value is null or jsonb_typeof(p_value) = 'null' then null
    when jsonb_typeof(p_value) <> 'string' then
      format('%s: expected a step id or null (got %s)', p_path, p_value::text)
    when not p_step_ids ? (p_value #>> '{}') then
      format('%s: unknown step "%s"', p_path, p_value #>> '{}')
  end;
$$;

-- The three checks above take the step ids as the keys of a jsonb object (validate_workflow
-- maps each id to its first position): `?` on an object is a binary search, where
-- `<> all(<array>)` scanned every id. step_id_set makes such an object of an array.
-- The text[] forms below stay for callers that hold an array (document_wait_errors).
create or replace function conveyor.step_id_set(p_step_ids text[])
returns jsonb
language sql
immutable
parallel safe
set search_path = ''
as $$
  select coalesce(jsonb_object_agg(i.id, true), '{}') from unnest(p_step_ids) as i (id) where i.id is not null;
$$;

create or replace function conveyor.document_template_errors(
  p_value jsonb,
  p_path text,
  p_step_ids text[],
  p_item boolean default false
)
returns setof text
language sql
stable
set search_path = ''
as $$
  select conveyor.document_template_errors(p_value, p_path, conveyor.step_id_set(p_step_ids), p_item);
$$;

create or replace function conveyor.document_condition_errors(
  p_condition jsonb,
  p_path text,
  p_step_ids text[],
  p_item boolean default false
)
returns setof text
language sql
stable
set search_path = ''
as $$
  select conveyor.document_condition_errors(p_condition, p_path, conveyor.step_id_set(p_step_ids), p_item);
$$;

create or replace function conveyor.document_target_error(p_value jsonb, p_path text, p_step_ids text[])
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
  select conveyor.document_target_error(p_value, p_path, conveyor.step_id_set(p_step_ids));
$$;

-- A variable name (set keys, transform into).
create or replace function conveyor.document_var_error(p_name text, p_path text)
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
  select case when p_name !~ '^[a-z_][a-z0-9_]*$' then
    format('%s: invalid variable name "%s" (lowercase letters, digits and _; not starting with a digit)',
      p_path, p_name)
  end;
$$;

-- A retry policy: {"attempts": n, "backoff": "exponential"|"fixed", "initial", "max", "jitter"}.
create or replace function conveyor.document_retry_errors(p_retry jsonb, p_path text)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
begin
  if jsonb_typeof(p_retry) is distinct from 'object' then
    return next format('%s: expected an object such as {"attempts": 3, "backoff": "exponential"}', p_path);
    return;
  end if;
  return query
  select k.message
  from conveyor.document_key_errors(p_retry, p_path, array['attempts'], array['backoff', 'initial', 'max', 'jitter'])
    as k (message);
  return query
  select m.message
  from (values
    (1, case when p_retry ? 'attempts' then
      conveyor.document_integer_error(p_retry -> 'attempts', p_path || '.attempts', 100) end),
    (2, case when p_retry ? 'backoff' and (p_retry -> 'backoff') not in ('"exponential"', '"fixed"') then
      format('%s.backoff: expected "exponential" or "fixed" (got %s)', p_path, (p_retry -> 'backoff')::text) end),
    (3, case when p_retry ? 'initial' then
      conveyor.document_duration_error(p_retry -> 'initial', p_path || '.initial') end),
    (4, case when p_retry ? 'max' then conveyor.document_duration_error(p_retry -> 'max', p_path || '.max') end),
    (5, case when p_retry ? 'jitter' and jsonb_typeof(p_retry -> 'jitter') <> 'boolean' then
      format('%s.jitter: expected true or false', p_path) end)
  ) as m (ord, message)
  where m.message is not null
  order by m.ord;
end;
$$;

-- A schedule trigger: {"cron", "timezone"?, "overlap"?, "max_consecutive_failures"?}
-- (kept in conveyor.schedules by conveyor.sync_schedule, sql/schedules.sql).
create or replace function conveyor.document_schedule_errors(p_schedule jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
begin
  if jsonb_typeof(p_schedule) is distinct from 'object' then
    return next 'trigger.schedule: expected an object such as {"cron": "0 9 * * MON", "timezone": "Europe/Berlin"}';
    return;
  end if;
  return query
  select k.message
  from conveyor.document_key_errors(
    p_schedule, 'trigger.schedule', array['cron'], array['timezone', 'overlap', 'max_consecutive_failures']
  ) as k (message);
  if p_schedule ? 'cron' then
    if jsonb_typeof(p_schedule -> 'cron') <> 'string' then
      return next 'trigger.schedule.cron: expected a 5-field cron expression such as "0 9 * * MON"';
    else
      return query select c.message from conveyor.cron_errors(p_schedule ->> 'cron', 'trigger.schedule.cron') as c (message);
    end if;
  end if;
  return query
  select m.message
  from (values
    (1, case when p_schedule ? 'timezone' then
      conveyor.document_timezone_error(p_schedule -> 'timezone', 'trigger.schedule.timezone') end),
    (2, case when p_schedule ? 'overlap' and (p_schedule -> 'overlap') not in ('"skip"', '"allow"') then
      format('trigger.schedule.overlap: expected "skip" or "allow" (got %s)', (p_schedule -> 'overlap')::text) end),
    (3, case when p_schedule ? 'max_consecutive_failures' then conveyor.document_integer_error(
      p_schedule -> 'max_consecutive_failures', 'trigger.schedule.max_consecutive_failures') end)
  ) as m (ord, message)
  where m.message is not null
  order by m.ord;
end;
$$;

-- An inbound webhook trigger: {"methods"?, "ip_allowlist"?, "max_body_bytes"?, "tolerance"?}
-- (kept in conveyor.webhook_endpoints by conveyor.sync_webhook, sql/webhooks.sql).
create or replace function conveyor.document_webhook_errors(p_webhook jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_item record;
begin
  if jsonb_typeof(p_webhook) is distinct from 'object' then
    return next 'trigger.webhook: expected an object (may be empty: {})';
    return;
  end if;
  return query
  select k.message
  from conveyor.document_key_errors(
    p_webhook, 'trigger.webhook', '{}', array['methods', 'ip_allowlist', 'max_body_bytes', 'tolerance']
  ) as k (message);
  if p_webhook ? 'methods' then
    if jsonb_typeof(p_webhook -> 'methods') <> 'array' or p_webhook -> 'methods' = '[]' then
      return next 'trigger.webhook.methods: expected a non-empty array such as ["POST"]';
    else
      return query
      select format('trigger.webhook.methods[%s]: expected one of GET, POST, PUT, PATCH, DELETE (got %s)',
        m.n - 1, m.method::text)
      from jsonb_array_elements(p_webhook -> 'methods') with ordinality as m (method, n)
      where jsonb_typeof(m.method) <> 'string' or upper(m.method #>> '{}') not in ('GET', 'POST', 'PUT', 'PATCH', 'DELETE')
      order by m.n;
    end if;
  end if;
  if p_webhook ? 'ip_allowlist' then
    if jsonb_typeof(p_webhook -> 'ip_allowlist') <> 'array' then
      return next 'trigger.webhook.ip_allowlist: expected an array of addresses or networks such as ["203.0.113.0/24"]';
    else
      -- A row loop, because each cast needs its own exception block; lists are short.
      for v_item in
        select a.address, a.n from jsonb_array_elements(p_webhook -> 'ip_allowlist') with ordinality as a (address, n)
      loop
        begin
          if jsonb_typeof(v_item.address) <> 'string' then
            raise invalid_text_representation;
          end if;
          perform (v_item.address #>> '{}')::cidr;
        exception
          when data_exception then
            return next format('trigger.webhook.ip_allowlist[%s]: invalid address or network %s', v_item.n - 1,
              v_item.address::text);
        end;
      end loop;
    end if;
  end if;
  return query
  select m.message
  from (values
    (1, case when p_webhook ? 'max_body_bytes' then
      conveyor.document_integer_error(p_webhook -> 'max_body_bytes', 'trigger.webhook.max_body_bytes') end),
    (2, case when p_webhook ? 'tolerance' then
      conveyor.document_duration_error(p_webhook -> 'tolerance', 'trigger.webhook.tolerance') end)
  ) as m (ord, message)
  where m.message is not null
  order by m.ord;
end;
$$;

-- A date trigger: {"entity", "column", "offset", "at"?, "timezone"?, "timezone_column"?}
-- (kept in conveyor.date_triggers by conveyor.sync_date_trigger, sql/date_triggers.sql).
-- The entity must be registered and its table watched (its changes move the dates).
create or replace function conveyor.document_date_errors(p_date jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_entity conveyor.entities;
  v_offset text := ltrim(p_date ->> 'offset', '-');
begin
  if jsonb_typeof(p_date) is distinct from 'object' then
    return next 'trigger.date: expected an object such as {"entity": "contact", "column": "joined_at", '
    '"offset": "30 days"}';
    return;
  end if;
  return query
  select k.message
  from conveyor.document_key_errors(
    p_date, 'trigger.date', array['entity', 'column', 'offset'], array['at', 'timezone', 'timezone_column']
  ) as k (message);

  if p_date ? 'entity' then
    select e.* into v_entity from conveyor.entities as e where e.entity = p_date ->> 'entity';
    if not found then
      return next format(
        'trigger.date.entity: unknown entity %s (registered: %s)', (p_date -> 'entity')::text,
        coalesce((select string_agg(e.entity, ', ' order by e.entity) from conveyor.entities as e), 'none')
      );
    else
      if not exists (select from conveyor.watched_tables as t where t.table_name = v_entity.table_name) then
        return next format(
          'trigger.date.entity: entity "%s" is not watched (call conveyor.watch(%L, ...) first: its changes move '
          'the dates)',
          v_entity.entity, v_entity.table_name::text
        );
      end if;
      return query
      select format('trigger.date.%s: table %s has no %s column "%s"', c.k, v_entity.table_name::text,
        case c.k when 'column' then 'date or timestamp' else 'text' end, p_date ->> c.k)
      from (values ('column', 1), ('timezone_column', 2)) as c (k, ord)
      where p_date ? c.k and not exists (
        select from pg_catalog.pg_attribute as a
        where a.attrelid = v_entity.table_name and a.attname = p_date ->> c.k and a.attnum > 0 and not a.attisdropped
          and a.atttypid = any(case c.k
            when 'column' then array['date', 'timestamp', 'timestamptz']::regtype[]::oid[]
            else array['text', 'varchar']::regtype[]::oid[]
          end)
      )
      order by c.ord;
    end if;
  end if;

  if p_date ? 'offset' then
    if jsonb_typeof(p_date -> 'offset') <> 'string' then
      return next format('trigger.date.offset: expected a duration such as "30 days" or "-7 days" (got %s)',
        (p_date -> 'offset')::text);
    else
      return query
      select d.message
      from (select conveyor.document_duration_error(to_jsonb(v_offset), 'trigger.date.offset') as message) as d
      where d.message is not null;
    end if;
  end if;
  if p_date ? 'at' and (jsonb_typeof(p_date -> 'at') <> 'string'
    or (p_date ->> 'at') !~ '^([01]?[0-9]|2[0-3]):[0-5][0-9]$') then
    return next format('trigger.date.at: expected a time of day "HH:MM" such as "09:00" (got %s)',
      (p_date -> 'at')::text);
  end if;
  if p_date ? 'timezone' and p_date -> 'timezone' <> '"tenant"' then
    return query
    select z.message
    from (select conveyor.document_timezone_error(p_date -> 'timezone', 'trigger.date.timezone') as message) as z
    where z.message is not null;
  end if;
end;
$$;

-- The trigger: exactly one of
--   {"event", "source"?, "filter"?, "condition"?}   an event type or pattern
--   {"manual": true}                                 started by an API call
--   {"schedule": {...}} | {"webhook": {...}} | {"date": {...}}
create or replace function conveyor.document_trigger_errors(p_trigger jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_kinds text[];
begin
  if jsonb_typeof(p_trigger) is distinct from 'object' then
    return next 'trigger: expected an object with one of "event", "manual", "schedule", "webhook", "date"';
    return;
  end if;

  return query
  select format(
    'trigger.%s: unknown key (expected one of: event, source, filter, condition, manual, schedule, webhook, date)',
    k.k
  )
  from jsonb_object_keys(p_trigger) as k (k)
  where k.k not in ('event', 'source', 'filter', 'condition', 'manual', 'schedule', 'webhook', 'date')
  order by k.k;

  v_kinds := array(
    select k from unnest(array['event', 'manual', 'schedule', 'webhook', 'date']) as k where p_trigger ? k
  );
  if cardinality(v_kinds) = 0 then
    return next 'trigger: needs one of "event", "manual", "schedule", "webhook" or "date"';
    return;
  elsif cardinality(v_kinds) > 1 then
    return next format('trigger: a workflow has exactly one trigger, this one has %s', array_to_string(v_kinds, ', '));
    return;
  end if;

  if v_kinds[1] <> 'event' then
    return query
    select format('trigger.%s: only allowed with "event"', k)
    from unnest(array['source', 'filter', 'condition']) as k
    where p_trigger ? k;
  end if;

  case v_kinds[1]
    when 'manual' then
      if p_trigger -> 'manual' <> 'true' then
        return next 'trigger.manual: expected true (a workflow started by conveyor.trigger_workflow or the API)';
      end if;
    when 'schedule' then
      return query select e.message from conveyor.document_schedule_errors(p_trigger -> 'schedule') as e (message);
    when 'webhook' then
      return query select e.message from conveyor.document_webhook_errors(p_trigger -> 'webhook') as e (message);
    when 'date' then
      return query select e.message from conveyor.document_date_errors(p_trigger -> 'date') as e (message);
    else
      if jsonb_typeof(p_trigger -> 'event') is distinct from 'string'
        or (p_trigger ->> 'event')
        !~ '^(\*|[a-z][a-z0-9_]*\.\*|[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*\.(\*|[a-z][a-z0-9_]*))$' then
        return next format(
          'trigger.event: invalid event pattern %s (expected module.entity.action such as crm.contact.created, '
          'or a trailing wildcard: crm.deal.*, crm.*, *)',
          (p_trigger -> 'event')::text
        );
      end if;
      if p_trigger ? 'source' and jsonb_typeof(p_trigger -> 'source') not in ('string', 'null') then
        return next format(
          'trigger.source: expected a module name such as "crm" (got %s)', (p_trigger -> 'source')::text
        );
      end if;
      if jsonb_typeof(p_trigger -> 'filter') <> 'null' then
        return query
        select f.message from conveyor.filter_errors(p_trigger -> 'filter', 'trigger.filter') as f (message);
      end if;
      -- Dispatch evaluates the condition with the trigger and now only (no steps run yet).
      if jsonb_typeof(p_trigger -> 'condition') <> 'null' then
        return query
        select c.message
        from conveyor.condition_errors(p_trigger -> 'condition', 'trigger.condition', array['trigger', 'now'])
          as c (message);
      end if;
  end case;
end;
$$;

-- Workflow settings (every key optional).
create or replace function conveyor.document_settings_errors(p_settings jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
begin
  if jsonb_typeof(p_settings) is distinct from 'object' then
    return next 'settings: expected an object';
    return;
  end if;
  return query
  select k.message
  from conveyor.document_key_errors(
    p_settings, 'settings', '{}',
    array['run_once_per_entity', 'max_executions_per_hour', 'max_concurrent', 'timeout', 'retry', 'on_error',
      'max_steps']
  ) as k (message);
  return query
  select m.message
  from (values
    (1, case when p_settings ? 'run_once_per_entity' and jsonb_typeof(p_settings -> 'run_once_per_entity') <> 'boolean'
      then 'settings.run_once_per_entity: expected true or false' end),
    (2, case when p_settings ? 'max_executions_per_hour' then
      conveyor.document_integer_error(p_settings -> 'max_executions_per_hour', 'settings.max_executions_per_hour') end),
    (3, case when p_settings ? 'max_concurrent' then
      conveyor.document_integer_error(p_settings -> 'max_concurrent', 'settings.max_concurrent') end),
    (4, case when p_settings ? 'timeout' then
      conveyor.document_duration_error(p_settings -> 'timeout', 'settings.timeout') end)
  ) as m (ord, message)
  where m.message is not null
  order by m.ord;
  if p_settings ? 'retry' then
    return query select r.message from conveyor.document_retry_errors(p_settings -> 'retry', 'settings.retry') as r (message);
  end if;
  return query
  select m.message
  from (values
    (6, case when p_settings ? 'on_error' and (p_settings -> 'on_error') not in ('"fail"', '"continue"') then
      format('settings.on_error: expected "fail" or "continue" (got %s)', (p_settings -> 'on_error')::text) end),
    (7, case when p_settings ? 'max_steps' then
      conveyor.document_integer_error(p_settings -> 'max_steps', 'settings.max_steps', 100000) end)
  ) as m (ord, message)
  where m.message is not null
  order by m.ord;
end;
$$;

-- An action step's `with`, checked against its action type's keys.
drop function if exists conveyor.document_action_errors(jsonb, text, text[]);
create or replace function conveyor.document_action_errors(p_step jsonb, p_path text, p_step_ids jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_action text := p_step ->> 'action';
  v_with jsonb := p_step -> 'with';
  v_required text[];
  v_optional text[];
begin
  case v_action
    when 'email.send' then
      v_required := array['to', 'subject'];
      v_optional := array['text', 'html', 'cc', 'bcc', 'from_name', 'reply_to'];
    when 'webhook.send' then
      v_required := array['url'];
      v_optional := array['method', 'headers', 'body', 'timeout'];
    when 'slack.send' then
      v_required := array['text'];
      v_optional := array['blocks', 'username', 'icon_emoji', 'icon_url', 'channel'];
    when 'discord.send' then
      v_required := array['text'];
      v_optional := array['username', 'avatar_url', 'embeds'];
    when 'sms.send' then
      v_required := array['to', 'body'];
      v_optional := array['from'];
    else
      return next format(
        '%s.action: unknown action type %s (expected one of: email.send, webhook.send, slack.send, '
        'discord.send, sms.send)',
        p_path, (p_step -> 'action')::text
      );
  end case;

  if p_step ? 'connection' and jsonb_typeof(p_step -> 'connection') <> 'null'
    and (jsonb_typeof(p_step -> 'connection') <> 'string' or p_step ->> 'connection' = '') then
    return next format('%s.connection: expected a connection name (got %s)', p_path, (p_step -> 'connection')::text);
  end if;

  if not p_step ? 'with' then
    return next format('%s.with: required key is missing', p_path);
    return;
  end if;
  if jsonb_typeof(v_with) <> 'object' then
    return next format('%s.with: expected an object', p_path);
    return;
  end if;

  if v_required is not null then
    return query
    select k.message from conveyor.document_key_errors(v_with, p_path || '.with', v_required, v_optional) as k (message);
    if v_action = 'email.send' and not (v_with ? 'text' or v_with ? 'html') then
      return next format('%s.with: needs "text" or "html" (the body of the email)', p_path);
    end if;
    if v_action = 'webhook.send' then
      if jsonb_typeof(v_with -> 'url') = 'string' and strpos(v_with ->> 'url', '{{') = 0
        and v_with ->> 'url' !~* '^https?://[^/]+' then
        return next format('%s.with.url: expected an http:// or https:// URL (got %s)', p_path, (v_with -> 'url')::text);
      end if;
      if v_with ? 'method' and (jsonb_typeof(v_with -> 'method') <> 'string' or (
        strpos(v_with ->> 'method', '{{') = 0
        and upper(v_with ->> 'method') not in ('GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD'))) then
        return next format(
          '%s.with.method: expected one of GET, POST, PUT, PATCH, DELETE, HEAD (got %s)',
          p_path, (v_with -> 'method')::text
        );
      end if;
      if v_with ? 'headers' and jsonb_typeof(v_with -> 'headers') <> 'object' then
        return next format('%s.with.headers: expected an object of header names and values', p_path);
      end if;
      if v_with ? 'timeout' then
        return query
        select d.message
        from (
          select conveyor.document_duration_error(
            v_with -> 'timeout', p_path || '.with.timeout', conveyor.max_action_timeout(), 'conveyor.max_action_timeout'
          ) as message
        ) as d
        where d.message is not null;
      end if;
    end if;
  end if;

  return query
  select t.message from conveyor.document_template_errors(v_with, p_path || '.with', p_step_ids) as t (message);
end;
$$;

-- A data step: {"op", "entity", "id"?, "where"?, "values"?, "tag"?} against conveyor.entities
-- and the columns of the entity's table (so a typo is caught at publish, not at run time).
drop function if exists conveyor.document_data_errors(jsonb, text, text[]);
create or replace function conveyor.document_data_errors(p_data jsonb, p_path text, p_step_ids jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_op text := p_data ->> 'op';
  v_path text := p_path || '.data';
  v_entity conveyor.entities;
  v_optional text[];
begin
  if jsonb_typeof(p_data) is distinct from 'object' then
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
    if p_data ? 'op' then
      return next format(
        '%s.op: unknown data operation %s (expected one of: lookup, create, update, delete, add_tag, remove_tag)',
        v_path, (p_data -> 'op')::text
      );
    end if;
    v_optional := array['id', 'where', 'values', 'tag'];
  end if;
  return query
  select k.message from conveyor.document_key_errors(p_data, v_path, array['op', 'entity'], v_optional) as k (message);

  if v_op = 'create' and not p_data ? 'values' then
    return next format('%s.values: required key is missing (the columns of the new row)', v_path);
  end if;
  if v_op = 'update' and not p_data ? 'values' then
    return next format('%s.values: required key is missing (the columns to change)', v_path);
  end if;
  if v_op in ('update', 'delete', 'lookup', 'add_tag', 'remove_tag') and not (p_data ? 'id' or p_data ? 'where') then
    return next format('%s: needs "id" or "where" to find the row', v_path);
  end if;
  if v_op in ('add_tag', 'remove_tag') and not p_data ? 'tag' then
    return next format('%s.tag: required key is missing', v_path);
  end if;
  if p_data ? 'where' and jsonb_typeof(p_data -> 'where') <> 'object' then
    return next format('%s.where: expected an object of column names and values', v_path);
  end if;
  if p_data ? 'values' and jsonb_typeof(p_data -> 'values') <> 'object' then
    return next format('%s.values: expected an object of column names and values', v_path);
  end if;

  if p_data ? 'entity' then
    select e.* into v_entity from conveyor.entities as e where e.entity = p_data ->> 'entity';
    if not found then
      return next format(
        '%s.entity: unknown entity %s (registered: %s)',
        v_path, (p_data -> 'entity')::text,
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
          case when jsonb_typeof(p_data -> p.part) = 'object' then p_data -> p.part else '{}' end
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
  cross join lateral conveyor.document_template_errors(p_data -> p.part, v_path || '.' || p.part, p_step_ids)
    as t (message)
  where p_data ? p.part
  order by p.ord;
end;
$$;

-- A transform step: map, filter, aggregate, format_date or render, with optional "into".
drop function if exists conveyor.document_transform_errors(jsonb, text, text[]);
create or replace function conveyor.document_transform_errors(p_transform jsonb, p_path text, p_step_ids jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_path text := p_path || '.transform';
  v_op text := p_transform ->> 'op';
  v_required text[];
begin
  if jsonb_typeof(p_transform) is distinct from 'object' then
    return next format('%s: expected an object with "op"', v_path);
    return;
  end if;
  v_required := case v_op
    when 'map' then array['op', 'source', 'template']
    when 'filter' then array['op', 'source', 'where']
    when 'aggregate' then array['op', 'source', 'function']
    when 'format_date' then array['op', 'value', 'format']
    when 'render' then array['op', 'template']
  end;
  if v_required is null then
    return next format(
      '%s.op: %s (expected one of: map, filter, aggregate, format_date, render)',
      v_path, case when p_transform ? 'op' then 'unknown transform ' || (p_transform -> 'op')::text
        else 'required key is missing' end
    );
    return;
  end if;
  return query
  select k.message
  from conveyor.document_key_errors(
    p_transform, v_path, v_required,
    array['into'] || case v_op when 'aggregate' then array['field'] when 'format_date' then array['timezone']
      else '{}'::text[] end
  ) as k (message);

  if v_op = 'aggregate' and p_transform ? 'function'
    and (p_transform -> 'function') not in ('"sum"', '"avg"', '"count"', '"min"', '"max"') then
    return next format(
      '%s.function: unknown aggregate %s (expected one of: sum, avg, count, min, max)',
      v_path, (p_transform -> 'function')::text
    );
  end if;
  if v_op = 'aggregate' and p_transform ? 'field' and jsonb_typeof(p_transform -> 'field') <> 'string' then
    return next format('%s.field: expected a field name such as "amount"', v_path);
  end if;
  if v_op = 'format_date' and p_transform ? 'format' and jsonb_typeof(p_transform -> 'format') <> 'string' then
    return next format('%s.format: expected a format such as "YYYY-MM-DD"', v_path);
  end if;
  if v_op = 'format_date' and jsonb_typeof(p_transform -> 'timezone') = 'string'
    and strpos(p_transform ->> 'timezone', '{{') = 0 then
    return query
    select z.message
    from (select conveyor.document_timezone_error(p_transform -> 'timezone', v_path || '.timezone') as message) as z
    where z.message is not null;
  end if;
  if v_op = 'render' and jsonb_typeof(p_transform -> 'template') <> 'string' then
    return next format('%s.template: expected a text template', v_path);
  end if;
  if p_transform ? 'into' then
    if jsonb_typeof(p_transform -> 'into') <> 'string' then
      return next format('%s.into: expected a variable name', v_path);
    else
      return query
      select v.message
      from (select conveyor.document_var_error(p_transform ->> 'into', v_path || '.into') as message) as v
      where v.message is not null;
    end if;
  end if;

  -- Templates: source / value / template / timezone; map templates see {{item}}.
  return query
  select t.message
  from (values ('source', 1), ('value', 2), ('template', 3), ('timezone', 4)) as p (part, ord)
  cross join lateral conveyor.document_template_errors(
    p_transform -> p.part, v_path || '.' || p.part, p_step_ids, v_op = 'map' and p.part = 'template'
  ) as t (message)
  where p_transform ? p.part
  order by p.ord;
  if v_op = 'filter' and p_transform ? 'where' then
    return query
    select c.message
    from conveyor.document_condition_errors(p_transform -> 'where', v_path || '.where', p_step_ids, true)
      as c (message);
  end if;
end;
$$;

-- A delay: {"for"} | {"until"} | {"window"} | {"for", "window"}.
drop function if exists conveyor.document_delay_errors(jsonb, text, text[]);
create or replace function conveyor.document_delay_errors(p_delay jsonb, p_path text, p_step_ids jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_path text := p_path || '.delay';
  v_window jsonb := p_delay -> 'window';
begin
  if jsonb_typeof(p_delay) is distinct from 'object' then
    return next format('%s: expected an object with "for", "until" or "window"', v_path);
    return;
  end if;
  return query
  select k.message from conveyor.document_key_errors(p_delay, v_path, '{}', array['for', 'until', 'window']) as k (message);
  if not (p_delay ? 'for' or p_delay ? 'until' or p_delay ? 'window') then
    return next format('%s: needs "for" (a duration), "until" (a timestamp) or "window" (allowed times)', v_path);
  end if;
  if p_delay ? 'until' and (p_delay ? 'for' or p_delay ? 'window') then
    return next format('%s.until: cannot be combined with "for" or "window"', v_path);
  end if;

  if p_delay ? 'for' then
    return query
    select d.message
    from (select conveyor.document_duration_error(p_delay -> 'for', v_path || '.for') as message) as d
    where d.message is not null;
  end if;

  if p_delay ? 'until' then
    if jsonb_typeof(p_delay -> 'until') = 'string' and strpos(p_delay ->> 'until', '{{') > 0 then
      return query
      select t.message
      from conveyor.document_template_errors(p_delay -> 'until', v_path || '.until', p_step_ids) as t (message);
    else
      return query
      select d.message
      from (select conveyor.document_timestamp_error(p_delay -> 'until', v_path || '.until') as message) as d
      where d.message is not null;
    end if;
  end if;

  -- The window's shape is conveyor.window_errors' business (the same rules as at run time);
  -- a templated timezone is checked as a template.
  if p_delay ? 'window' then
    return query
    select w.message from conveyor.window_errors(v_window, v_path || '.window') as w (message);
    if jsonb_typeof(v_window -> 'timezone') = 'string' and strpos(v_window ->> 'timezone', '{{') > 0 then
      return query
      select t.message
      from conveyor.document_template_errors(v_window -> 'timezone', v_path || '.window.timezone', p_step_ids)
        as t (message);
    end if;
  end if;
end;
$$;

-- wait_for_event: {"event", "match"?, "since"?, "timeout"}.
create or replace function conveyor.document_wait_errors(p_wait jsonb, p_path text, p_step_ids text[])
returns setof text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_path text := p_path || '.wait_for_event';
begin
  if jsonb_typeof(p_wait) is distinct from 'object' then
    return next format('%s: expected an object with "event" and "timeout"', v_path);
    return;
  end if;
  return query
  select k.message
  from conveyor.document_key_errors(p_wait, v_path, array['event', 'timeout'], array['match', 'since']) as k (message);
  if p_wait ? 'event' and (jsonb_typeof(p_wait -> 'event') <> 'string'
    or (p_wait ->> 'event') !~ '^(\*|[a-z][a-z0-9_]*\.\*|[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*\.(\*|[a-z][a-z0-9_]*))$') then
    return next format(
      '%s.event: invalid event pattern %s (expected module.entity.action such as email.message.replied)',
      v_path, (p_wait -> 'event')::text
    );
  end if;
  if p_wait ? 'timeout' then
    return query
    select d.message
    from (select conveyor.document_duration_error(p_wait -> 'timeout', v_path || '.timeout') as message) as d
    where d.message is not null;
  end if;
  if p_wait ? 'match' then
    if jsonb_typeof(p_wait -> 'match') <> 'object' then
      return next format('%s.match: expected an object such as {"entity_id": "{{trigger.entity_id}}"}', v_path);
    else
      return query
      select format(
        '%s.match.%s: unknown match key (expected entity_type, entity_id, source or payload.<field>)', v_path, k.k
      )
      from jsonb_object_keys(p_wait -> 'match') as k (k)
      where k.k !~ '^(entity_type|entity_id|source|payload(\.[A-Za-z0-9_]+)+)$'
      order by k.k;
      return query
      select t.message
      from conveyor.document_template_errors(p_wait -> 'match', v_path || '.match', p_step_ids) as t (message);
    end if;
  end if;
  if p_wait ? 'since' then
    if jsonb_typeof(p_wait -> 'since') <> 'string' then
      return next format(
        '%s.since: expected "execution", "wait", a timestamp or a template, got %s', v_path, (p_wait -> 'since')::text
      );
    elsif strpos(p_wait ->> 'since', '{{') > 0 then
      return query
      select t.message
      from conveyor.document_template_errors(p_wait -> 'since', v_path || '.since', p_step_ids) as t (message);
    elsif (p_wait ->> 'since') not in ('execution', 'wait') and not conveyor.is_timestamp(p_wait ->> 'since') then
      return next format(
        '%s.since: %s is not "execution", "wait", a timestamp or a template', v_path, (p_wait -> 'since')::text
      );
    end if;
  end if;
end;
$$;

-- Whether a text is a timestamp PostgreSQL reads.
create or replace function conveyor.is_timestamp(p_text text)
returns boolean
language plpgsql
stable
set search_path = ''
as $$
begin
  perform p_text::timestamptz;
  return true;
exception when others then
  return false;
end;
$$;

-- wait_until: {"entity", "id", "condition", "timeout"}; the condition's fields are paths into
-- the entity's row ("row.status").
create or replace function conveyor.document_wait_until_errors(p_wait jsonb, p_path text, p_step_ids text[])
returns setof text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_path text := p_path || '.wait_until';
begin
  if jsonb_typeof(p_wait) is distinct from 'object' then
    return next format('%s: expected an object with "entity", "id", "condition" and "timeout"', v_path);
    return;
  end if;
  return query
  select k.message
  from conveyor.document_key_errors(p_wait, v_path, array['entity', 'id', 'condition', 'timeout'], '{}') as k (message);
  if p_wait ? 'entity' and (jsonb_typeof(p_wait -> 'entity') <> 'string'
    or not exists (select from conveyor.entities as e where e.entity = p_wait ->> 'entity')) then
    return next format(
      '%s.entity: %s is not a registered entity (see conveyor.entities)', v_path, (p_wait -> 'entity')::text
    );
  end if;
  if p_wait ? 'id' then
    if jsonb_typeof(p_wait -> 'id') not in ('string', 'number') then
      return next format('%s.id: expected the row id or a template such as "{{trigger.entity_id}}"', v_path);
    else
      return query
      select t.message
      from conveyor.document_template_errors(p_wait -> 'id', v_path || '.id', p_step_ids) as t (message);
    end if;
  end if;
  if p_wait ? 'condition' then
    return query
    select c.message
    from conveyor.condition_errors(
      p_wait -> 'condition', v_path || '.condition', conveyor.step_template_roots(false) || array['row']
    ) as c (message);
  end if;
  if p_wait ? 'timeout' then
    return query
    select d.message
    from (select conveyor.document_duration_error(p_wait -> 'timeout', v_path || '.timeout') as message) as d
    where d.message is not null;
  end if;
end;
$$;

-- One step: id, exactly one kind key, the keys that kind allows, its routing, its content.
drop function if exists conveyor.document_step_errors(jsonb, text, text[]);
create or replace function conveyor.document_step_errors(p_step jsonb, p_path text, p_step_ids jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_kinds text[];
  v_kind text;
  v_allowed text[];
  v_kind_keys constant text[] := array[
    'action', 'if', 'switch', 'set', 'transform', 'stop', 'emit', 'data', 'delay', 'wait_for_event', 'wait_until'
  ];
begin
  if jsonb_typeof(p_step) is distinct from 'object' then
    return next format('%s: expected a step object with "id" and one kind key (%s)', p_path,
      array_to_string(v_kind_keys, ', '));
    return;
  end if;

  if not p_step ? 'id' then
    return next format('%s.id: required key is missing', p_path);
  elsif jsonb_typeof(p_step -> 'id') <> 'string' or (p_step ->> 'id') !~ '^[a-z0-9][a-z0-9_-]*$' then
    return next format(
      '%s.id: invalid step id %s (lowercase letters, digits, _ and -, starting with a letter or digit)',
      p_path, (p_step -> 'id')::text
    );
  end if;

  v_kinds := array(select k from unnest(v_kind_keys) as k where p_step ? k);
  if cardinality(v_kinds) = 0 then
    return next format('%s: missing the step kind (one of: %s)', p_path, array_to_string(v_kind_keys, ', '));
    return;
  elsif cardinality(v_kinds) > 1 then
    return next format('%s: a step has exactly one kind, this one has %s', p_path, array_to_string(v_kinds, ', '));
    return;
  end if;
  v_kind := v_kinds[1];

  v_allowed := array['id', v_kind, 'on_error'] || case v_kind
    when 'action' then array['connection', 'with', 'next', 'retry', 'timeout']
    when 'if' then array['then', 'else']
    when 'switch' then array['default']
    when 'wait_for_event' then array['on_event', 'on_timeout']
    when 'wait_until' then array['on_met', 'on_timeout']
    when 'stop' then '{}'::text[]
    else array['next']
  end;
  return query
  select format('%s.%s: unknown key for a "%s" step (expected one of: %s)', p_path, k.k, v_kind,
    array_to_string(v_allowed, ', '))
  from jsonb_object_keys(p_step) as k (k)
  where k.k <> all(v_allowed)
  order by k.k;

  -- Routing: every target is null (end) or an existing step.
  return query
  select t.message
  from (
    select r.ord, conveyor.document_target_error(p_step -> r.k, p_path || '.' || r.k, p_step_ids) as message
    from unnest(array['next', 'then', 'else', 'default', 'on_event', 'on_met', 'on_timeout']) with ordinality as r (k, ord)
    where p_step ? r.k and r.k = any(v_allowed)
  ) as t
  where t.message is not null
  order by t.ord;

  if p_step ? 'on_error' then
    if jsonb_typeof(p_step -> 'on_error') = 'object' then
      if not (p_step -> 'on_error') ? 'goto' or (select count(*) from jsonb_object_keys(p_step -> 'on_error')) <> 1 then
        return next format('%s.on_error: expected {"goto": "<step id>"}', p_path);
      elsif jsonb_typeof(p_step -> 'on_error' -> 'goto') is distinct from 'string' then
        return next format('%s.on_error.goto: expected a step id', p_path);
      else
        return query
        select t.message
        from (select conveyor.document_target_error(p_step -> 'on_error' -> 'goto', p_path || '.on_error.goto',
          p_step_ids) as message) as t
        where t.message is not null;
      end if;
    elsif (p_step -> 'on_error') = '"retry"' and v_kind <> 'action' then
      return next format('%s.on_error: "retry" is only possible for action steps', p_path);
    elsif (p_step -> 'on_error') not in ('"fail"', '"continue"', '"retry"') then
      return next format(
        '%s.on_error: expected "fail", "continue", "retry" or {"goto": "<step id>"} (got %s)',
        p_path, (p_step -> 'on_error')::text
      );
    end if;
  end if;

  if v_kind = 'action' then
    if p_step ? 'retry' then
      return query
      select r.message from conveyor.document_retry_errors(p_step -> 'retry', p_path || '.retry') as r (message);
    end if;
    if p_step ? 'timeout' then
      return query
      select d.message
      from (
        select conveyor.document_duration_error(
          p_step -> 'timeout', p_path || '.timeout', conveyor.max_action_timeout(), 'conveyor.max_action_timeout'
        ) as message
      ) as d
      where d.message is not null;
    end if;
    return query select a.message from conveyor.document_action_errors(p_step, p_path, p_step_ids) as a (message);

  elsif v_kind = 'if' then
    return query
    select c.message from conveyor.document_condition_errors(p_step -> 'if', p_path || '.if', p_step_ids) as c (message);

  elsif v_kind = 'switch' then
    if coalesce(p_step -> 'switch', '[]') in ('[]', 'null') or jsonb_typeof(p_step -> 'switch') <> 'array' then
      return next format('%s.switch: expected a non-empty array of {"when": <condition>, "goto": <step id>}', p_path);
    else
      return query
      select m.message
      from jsonb_array_elements(p_step -> 'switch') with ordinality as c (case_, n)
      cross join lateral (
        select 1 as ord, x.message, x.n
        from (
          select format('%s.switch[%s]: expected an object with "when" and "goto"', p_path, c.n - 1) as message, 1::bigint as n
          where jsonb_typeof(c.case_) <> 'object'
        ) as x
        union all
        select 2, k.message, k.n
        from conveyor.document_key_errors(
          case when jsonb_typeof(c.case_) = 'object' then c.case_ else '{"when": null, "goto": null}' end,
          format('%s.switch[%s]', p_path, c.n - 1), array['when', 'goto']
        ) with ordinality as k (message, n)
        union all
        select 3, conveyor.document_target_error(c.case_ -> 'goto', format('%s.switch[%s].goto', p_path, c.n - 1),
          p_step_ids), 1
        union all
        select 4, w.message, w.n
        from conveyor.document_condition_errors(c.case_ -> 'when', format('%s.switch[%s].when', p_path, c.n - 1),
          p_step_ids) with ordinality as w (message, n)
        where jsonb_typeof(c.case_) = 'object' and c.case_ ? 'when'
      ) as m
      where m.message is not null
      order by c.n, m.ord, m.n;
    end if;

  elsif v_kind = 'set' then
    if jsonb_typeof(p_step -> 'set') <> 'object' or p_step -> 'set' = '{}' then
      return next format('%s.set: expected an object of variable names and values', p_path);
    else
      return query
      select v.message
      from (
        select conveyor.document_var_error(k.k, p_path || '.set.' || k.k) as message, k.k
        from jsonb_object_keys(p_step -> 'set') as k (k)
      ) as v
      where v.message is not null
      order by v.k;
      return query
      select t.message from conveyor.document_template_errors(p_step -> 'set', p_path || '.set', p_step_ids) as t (message);
    end if;

  elsif v_kind = 'transform' then
    return query
    select t.message from conveyor.document_transform_errors(p_step -> 'transform', p_path, p_step_ids) as t (message);

  elsif v_kind = 'stop' then
    if jsonb_typeof(p_step -> 'stop') <> 'object' then
      return next format('%s.stop: expected an object such as {"reason": "...", "status": "completed"}', p_path);
    else
      return query
      select k.message
      from conveyor.document_key_errors(p_step -> 'stop', p_path || '.stop', '{}', array['reason', 'status']) as k (message);
      if (p_step -> 'stop') ? 'status' and (p_step -> 'stop' -> 'status') not in ('"completed"', '"failed"') then
        return next format('%s.stop.status: expected "completed" or "failed" (got %s)', p_path,
          (p_step -> 'stop' -> 'status')::text);
      end if;
      if (p_step -> 'stop') ? 'reason' then
        return query
        select t.message
        from conveyor.document_template_errors(p_step -> 'stop' -> 'reason', p_path || '.stop.reason', p_step_ids)
          as t (message);
      end if;
    end if;

  elsif v_kind = 'emit' then
    if jsonb_typeof(p_step -> 'emit') <> 'object' then
      return next format('%s.emit: expected an object with "event"', p_path);
    else
      return query
      select k.message
      from conveyor.document_key_errors(
        p_step -> 'emit', p_path || '.emit', array['event'], array['payload', 'entity_type', 'entity_id']
      ) as k (message);
      if (p_step -> 'emit') ? 'event' and (jsonb_typeof(p_step -> 'emit' -> 'event') <> 'string'
        or (p_step -> 'emit' ->> 'event') !~ '^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$') then
        return next format(
          '%s.emit.event: invalid event type %s (expected module.entity.action such as crm.lead.qualified)',
          p_path, (p_step -> 'emit' -> 'event')::text
        );
      end if;
      return query
      select t.message
      from conveyor.document_template_errors((p_step -> 'emit') - 'event', p_path || '.emit', p_step_ids) as t (message);
    end if;

  elsif v_kind = 'data' then
    return query select d.message from conveyor.document_data_errors(p_step -> 'data', p_path, p_step_ids) as d (message);

  elsif v_kind = 'delay' then
    return query select d.message from conveyor.document_delay_errors(p_step -> 'delay', p_path, p_step_ids) as d (message);

  elsif v_kind = 'wait_for_event' then
    return query
    select w.message from conveyor.document_wait_errors(p_step -> 'wait_for_event', p_path,
      array(select jsonb_object_keys(p_step_ids))
    ) as w (message);

  elsif v_kind = 'wait_until' then
    return query
    select w.message from conveyor.document_wait_until_errors(p_step -> 'wait_until', p_path,
      array(select jsonb_object_keys(p_step_ids))
    ) as w (message);
  end if;
end;
$$;

-- The compiled step graph of a document: one row per step object, in document order.
-- Also used by validation (reachability), so it never raises on a malformed document;
-- the timeout is returned as text and parsed by publish.
--   next_step: "next" if given, else the following step in document order (null: the end);
--              a stop step has none. For if/switch/wait_for_event it is the fall-through,
--              used only when the step fails with on_error "continue".
--   branches: if {"then", "else"}, switch {"cases": [{"when", "goto"}], "default"},
--             wait_for_event {"event", "timeout"}; an omitted target falls through to the
--             next step in document order, an explicit null ends the execution.
--   on_error: the step's, else the workflow's settings.on_error, else 'fail'.
--   retry_policy: defaults || (the step's retry, else the workflow's settings.retry);
--              on_error "retry" without any policy means 3 attempts.
drop function if exists conveyor.compile_steps(jsonb);
create or replace function conveyor.compile_steps(p_document jsonb)
returns table (
  step_position integer,
  step_id text,
  kind text,
  action_type text,
  config jsonb,
  next_step text,
  branches jsonb,
  on_error text,
  error_step text,
  retry_policy jsonb,
  timeout_text text
)
language sql
immutable
parallel safe
set search_path = ''
as $$
  with elements as (
    select (e.n - 1)::integer as pos, e.step, lead(e.step ->> 'id') over (order by e.n) as fall_through
    from jsonb_array_elements(
      case when jsonb_typeof(p_document -> 'steps') = 'array' then p_document -> 'steps' else '[]' end
    ) with ordinality as e (step, n)
  ),

  steps as (
    select
      el.pos, el.step, el.fall_through,
      case
        when el.step ? 'action' then 'action'
        when el.step ? 'if' then 'condition'
        when el.step ? 'switch' then 'switch'
        when el.step ? 'set' then 'set_variable'
        when el.step ? 'transform' then 'transform'
        when el.step ? 'stop' then 'stop'
        when el.step ? 'emit' then 'emit'
        when el.step ? 'data' then 'data'
        when el.step ? 'delay' then 'delay'
        when el.step ? 'wait_for_event' then 'wait_for_event'
        when el.step ? 'wait_until' then 'wait_until'
      end as kind,
      case
        when jsonb_typeof(el.step -> 'on_error') = 'object' then 'goto'
        when el.step ? 'on_error' then el.step ->> 'on_error'
        else coalesce(p_document -> 'settings' ->> 'on_error', 'fail')
      end as on_error,
      coalesce(
        case when jsonb_typeof(el.step -> 'retry') = 'object' then el.step -> 'retry' end,
        case when jsonb_typeof(p_document -> 'settings' -> 'retry') = 'object' then p_document -> 'settings' -> 'retry' end
      ) as retry
    from elements as el
    where jsonb_typeof(el.step) = 'object'
  )

  select
    s.pos,
    s.step ->> 'id',
    s.kind,
    case s.kind when 'action' then s.step ->> 'action' when 'data' then 'data.' || (s.step -> 'data' ->> 'op') end,
    s.step - array['id', 'next', 'then', 'else', 'default', 'on_event', 'on_met', 'on_timeout', 'on_error', 'retry', 'timeout'],
    case
      when s.kind = 'stop' then null
      when s.step ? 'next' then s.step ->> 'next'
      else s.fall_through
    end,
    case s.kind
      when 'condition' then jsonb_build_object(
        'then', case when s.step ? 'then' then s.step ->> 'then' else s.fall_through end,
        'else', case when s.step ? 'else' then s.step ->> 'else' else s.fall_through end
      )
      when 'switch' then jsonb_build_object(
        'cases', coalesce((
          select jsonb_agg(jsonb_build_object('when', c.case_ -> 'when', 'goto', c.case_ -> 'goto') order by c.n)
          from jsonb_array_elements(
            case when jsonb_typeof(s.step -> 'switch') = 'array' then s.step -> 'switch' else '[]' end
          ) with ordinality as c (case_, n)
        ), '[]'),
        'default', case when s.step ? 'default' then s.step ->> 'default' else s.fall_through end
      )
      when 'wait_for_event' then jsonb_build_object(
        'event', case when s.step ? 'on_event' then s.step ->> 'on_event' else s.fall_through end,
        'timeout', case when s.step ? 'on_timeout' then s.step ->> 'on_timeout' else s.fall_through end
      )
      when 'wait_until' then jsonb_build_object(
        'event', case when s.step ? 'on_met' then s.step ->> 'on_met' else s.fall_through end,
        'timeout', case when s.step ? 'on_timeout' then s.step ->> 'on_timeout' else s.fall_through end
      )
    end,
    s.on_error,
    case when s.on_error = 'goto' then s.step -> 'on_error' ->> 'goto' end,
    '{"attempts": 1, "backoff": "exponential", "initial": "30s", "max": "1h", "jitter": true}'::jsonb
    || case when s.on_error = 'retry' and not coalesce(s.retry ? 'attempts', false) then '{"attempts": 3}'::jsonb
      else '{}'::jsonb end
    || coalesce(s.retry, '{}'),
    s.step ->> 'timeout'
  from steps as s
  order by s.pos;
$$;

-- Every problem of a workflow document, in document order, as "<path>: <message>".
-- An empty result means the document can be published.
-- A document past a limit (conveyor.document_limit_errors) gets only those problems: the
-- checks below recurse into conditions and templates and are not run on it.
-- Linear in the number of steps: step ids are a jsonb object (id -> first position), so
-- a membership test is a binary search, not a scan of every id; the graph for the
-- reachability walk is an object too (id -> targets), and a duplicate id is found by a
-- lookup. Before, each step scanned all step ids, each duplicate check all steps, and the
-- walk all edges per level: validating 500 / 2,000 / 4,000 steps took 2.3 / 4.5 / 8.3 ms
-- per step; now 1.4 / 1.6 / 1.4 ms (best of two, tests/sql/test_document_limits.py).
-- jit is off: the planner's default estimates for set-returning functions (1000 rows
-- each) push this small query over jit_above_cost, and compiling it costs ~0.6 s.
create or replace function conveyor.validate_workflow(p_document jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
set jit = off
as $$
declare
  v_steps jsonb := p_document -> 'steps';
  v_step_ids jsonb;
  v_graph jsonb;
  v_entry text;
  v_reached jsonb;
begin
  return query select l.message from conveyor.document_limit_errors(p_document) as l (message);
  if found then
    return;
  end if;

  if jsonb_typeof(p_document) is distinct from 'object' then
    return next '(document): expected a JSON object';
    return;
  end if;

  return query
  select k.message
  from conveyor.document_key_errors(
    p_document, '', array['slug', 'name', 'trigger', 'steps'],
    array['description', 'category', 'tags', 'active', 'settings']
  ) as k (message);

  return query
  select m.message
  from (values
    (1, case when p_document ? 'slug' and (jsonb_typeof(p_document -> 'slug') <> 'string'
      or (p_document ->> 'slug') !~ '^[a-z0-9][a-z0-9-]*$') then
      format('slug: invalid slug %s (lowercase letters, digits and -, starting with a letter or digit)',
        (p_document -> 'slug')::text) end),
    (2, case when p_document ? 'name' and (jsonb_typeof(p_document -> 'name') <> 'string'
      or btrim(p_document ->> 'name') = '') then 'name: expected a non-empty text' end),
    (3, case when jsonb_typeof(p_document -> 'description') not in ('string', 'null') then
      'description: expected a text' end),
    (4, case when jsonb_typeof(p_document -> 'category') not in ('string', 'null') then
      'category: expected a text' end),
    (5, case when p_document ? 'tags' and (jsonb_typeof(p_document -> 'tags') <> 'array'
      or jsonb_path_exists(p_document -> 'tags', 'lax $[*] ? (@.type() != "string")')) then
      'tags: expected an array of texts' end),
    (6, case when p_document ? 'active' and jsonb_typeof(p_document -> 'active') <> 'boolean' then
      'active: expected true or false' end)
  ) as m (ord, message)
  where m.message is not null
  order by m.ord;

  if p_document ? 'trigger' then
    return query select t.message from conveyor.document_trigger_errors(p_document -> 'trigger') as t (message);
  end if;
  if p_document ? 'settings' then
    return query select s.message from conveyor.document_settings_errors(p_document -> 'settings') as s (message);
  end if;

  if not p_document ? 'steps' then
    return;
  end if;
  if jsonb_typeof(v_steps) <> 'array' or v_steps = '[]' then
    return next 'steps: expected a non-empty array of steps';
    return;
  end if;

  -- id -> its first position (jsonb_object_agg keeps the last value of a repeated key).
  v_step_ids := coalesce((
    select jsonb_object_agg(e.step ->> 'id', e.n - 1 order by e.n desc)
    from jsonb_array_elements(v_steps) with ordinality as e (step, n)
    where jsonb_typeof(e.step -> 'id') = 'string'
  ), '{}');

  -- The compiled graph: id -> the ids it may go to; the walk starts at the first step.
  select
    coalesce(jsonb_object_agg(g.source, g.targets) filter (where g.source is not null), '{}'),
    (select c.step_id from conveyor.compile_steps(p_document) as c order by c.step_position limit 1)
  into v_graph, v_entry
  from (
    select c.step_id as source, coalesce(jsonb_agg(t.target) filter (where t.target is not null), '[]') as targets
    from conveyor.compile_steps(p_document) as c
    cross join lateral (
      select c.next_step
      where coalesce(c.kind, '') not in ('condition', 'switch', 'wait_for_event', 'wait_until') or c.on_error = 'continue'
      union all
      select c.error_step
      union all
      select c.branches ->> b.k from unnest(array['then', 'else', 'default', 'event', 'timeout']) as b (k)
      union all
      select x.case_ ->> 'goto' from jsonb_array_elements(coalesce(c.branches -> 'cases', '[]')) as x (case_)
    ) as t (target)
    group by c.step_id
  ) as g;

  -- Each level looks its steps' targets up in v_graph; union drops ids already reached.
  with recursive reachable (step_id) as (
    select v_entry
    union
    select t.target
    from reachable as r
    cross join lateral jsonb_array_elements_text(coalesce(v_graph -> r.step_id, '[]')) as t (target)
  )
  select coalesce(jsonb_object_agg(r.step_id, true), '{}') into v_reached
  from reachable as r
  where r.step_id is not null;

  -- Per step, in document order: its own problems, a duplicate id, unreachability.
  return query
  with elements as (
    select (e.n - 1)::integer as idx, e.step
    from jsonb_array_elements(v_steps) with ordinality as e (step, n)
  ),

  problems as (
    select el.idx, 1 as grp, p.n, p.message
    from elements as el
    cross join lateral conveyor.document_step_errors(el.step, format('steps[%s]', el.idx), v_step_ids)
      with ordinality as p (message, n)
    union all
    select el.idx, 0, 1, format('steps[%s].id: duplicate step id "%s" (already used by steps[%s])',
      el.idx, el.step ->> 'id', v_step_ids ->> (el.step ->> 'id'))
    from elements as el
    where jsonb_typeof(el.step -> 'id') = 'string' and (v_step_ids ->> (el.step ->> 'id'))::integer < el.idx
    union all
    select c.step_position, 2, 1, format('steps[%s]: step "%s" is unreachable from the first step "%s"',
      c.step_position, c.step_id, v_steps -> 0 ->> 'id')
    from conveyor.compile_steps(p_document) as c
    where c.step_id is not null and not v_reached ? c.step_id
  )

  select p.message from problems as p order by p.idx, p.grp, p.n;
end;
$$;

-- Publish a workflow document for a tenant: a new immutable version (or, for a new slug,
-- a new workflow at version 1). An invalid document raises 22023 and stores nothing.
-- Publishing a document identical to the current version (ignoring "active") creates no
-- version and returns the current one; its "active" key, when present, is still applied.
-- When "active" is absent, a new version keeps the workflow's flag (new workflows: active).
drop function if exists conveyor.publish(text, jsonb);
create or replace function conveyor.publish(p_tenant_id text, p_document jsonb)
returns table (workflow_id bigint, version integer)
language plpgsql
security definer
set search_path = ''
set jit = off
as $$
declare
  v_problems text[];
  v_slug text := coalesce(p_document ->> 'slug', '?');
  v_trigger jsonb := p_document -> 'trigger';
  v_settings jsonb := coalesce(p_document -> 'settings', '{}');
  v_workflow_id bigint;
  v_current integer;
  v_was_active boolean;
  v_active boolean;
  v_previous jsonb;
  v_version integer;
  v_filter jsonb;
begin
  perform conveyor.require_tenant(p_tenant_id);

  v_problems := array(select conveyor.validate_workflow(p_document));
  if cardinality(v_problems) > 0 then
    raise exception using
      errcode = '22023',
      message = format('workflow "%s": %s problem(s): %s', v_slug, cardinality(v_problems), v_problems[1]),
      detail = array_to_string(v_problems, e'\n'),
      hint = 'Fix the problems listed (one per line, each with the path of the field) and publish again; '
      'nothing was stored.';
  end if;

  if not exists (select from conveyor.tenants as t where t.tenant_id = p_tenant_id) then
    raise exception using
      errcode = 'P0002',
      message = format('workflow "%s": tenant "%s" does not exist', v_slug, p_tenant_id),
      hint = 'Create it first: select conveyor.create_tenant(id, name, timezone);';
  end if;

  -- Create the workflow or lock its row: concurrent publishes of one slug serialise here.
  insert into conveyor.workflows as w (tenant_id, slug, name, description, category, tags, active)
  values (
    p_tenant_id, v_slug, p_document ->> 'name', p_document ->> 'description', p_document ->> 'category',
    array(select jsonb_array_elements_text(coalesce(p_document -> 'tags', '[]'))),
    coalesce((p_document -> 'active')::boolean, true)
  )
  on conflict on constraint workflows_slug_per_tenant do update set updated_at = w.updated_at
  returning w.workflow_id, w.current_version, w.active into v_workflow_id, v_current, v_was_active;

  v_active := coalesce((p_document -> 'active')::boolean, v_was_active);

  select wv.definition into v_previous
  from conveyor.workflow_versions as wv
  where wv.workflow_id = v_workflow_id and wv.version = v_current;

  if v_previous is not null and v_previous - 'active' = p_document - 'active' then
    if v_active is distinct from v_was_active then
      perform conveyor.set_workflow_active(p_tenant_id, v_slug, v_active);
    end if;
    return query select v_workflow_id, v_current;
    return;
  end if;

  v_version := coalesce(
    (select max(wv.version) from conveyor.workflow_versions as wv where wv.workflow_id = v_workflow_id), 0
  ) + 1;

  insert into conveyor.workflow_versions (
    workflow_id, version, tenant_id, definition, entry_step, run_once_per_entity, max_executions_per_hour,
    max_concurrent, timeout, retry_policy, on_error, max_steps
  )
  values (
    v_workflow_id, v_version, p_tenant_id, p_document, p_document -> 'steps' -> 0 ->> 'id',
    coalesce((v_settings -> 'run_once_per_entity')::boolean, false),
    (v_settings ->> 'max_executions_per_hour')::numeric::integer,
    (v_settings ->> 'max_concurrent')::numeric::integer,
    case when v_settings ? 'timeout' then conveyor.parse_duration(v_settings ->> 'timeout') end,
    '{"attempts": 1, "backoff": "exponential", "initial": "30s", "max": "1h", "jitter": true}'::jsonb
    || coalesce(v_settings -> 'retry', '{}'),
    coalesce(v_settings ->> 'on_error', 'fail'),
    coalesce((v_settings ->> 'max_steps')::numeric::integer, 1000)
  );

  insert into conveyor.workflow_steps (
    workflow_id, version, step_id, tenant_id, position, kind, action_type, config, next_step, branches,
    on_error, error_step, retry_policy, timeout
  )
  select
    v_workflow_id, v_version, c.step_id, p_tenant_id, c.step_position, c.kind, c.action_type, c.config,
    c.next_step, c.branches, c.on_error, c.error_step, c.retry_policy,
    coalesce(conveyor.parse_duration(c.timeout_text), interval '30 seconds')
  from conveyor.compile_steps(p_document) as c;

  -- Swap the subscription: the old version's row is kept, inactive, for history.
  update conveyor.subscriptions as s set active = false
  where s.workflow_id = v_workflow_id and s.active;

  if v_trigger ? 'event' then
    v_filter := nullif(v_trigger -> 'filter', 'null');
    insert into conveyor.subscriptions (
      tenant_id, workflow_id, version, match_key, source, filter, filter_path, condition, active
    )
    values (
      p_tenant_id, v_workflow_id, v_version, v_trigger ->> 'event', v_trigger ->> 'source', v_filter,
      conveyor.compile_filter(v_filter), nullif(v_trigger -> 'condition', 'null'), v_active
    );
  end if;

  update conveyor.workflows as w
  set
    name = p_document ->> 'name',
    description = p_document ->> 'description',
    category = p_document ->> 'category',
    tags = array(select jsonb_array_elements_text(coalesce(p_document -> 'tags', '[]'))),
    active = v_active,
    current_version = v_version,
    updated_at = now()
  where w.workflow_id = v_workflow_id;

  -- Schedule, webhook and date triggers keep one row per workflow, maintained by their own
  -- files (sql/schedules.sql, sql/webhooks.sql, sql/date_triggers.sql); null removes what
  -- an earlier version had.
  perform conveyor.sync_schedule(v_workflow_id, v_trigger -> 'schedule');
  perform conveyor.sync_webhook(v_workflow_id, v_trigger -> 'webhook');
  perform conveyor.sync_date_trigger(v_workflow_id, v_trigger -> 'date');

  return query select v_workflow_id, v_version;
end;
$$;

-- The workflow of a tenant by slug, locked for update, or an error naming it.
create or replace function conveyor.lock_workflow(p_tenant_id text, p_slug text)
returns conveyor.workflows
language plpgsql
set search_path = ''
as $$
declare
  v_workflow conveyor.workflows;
begin
  select w.* into v_workflow
  from conveyor.workflows as w
  where w.tenant_id = p_tenant_id and w.slug = p_slug
  for update;
  if not found then
    raise exception using
      errcode = 'P0002',
      message = format('workflow "%s" not found for tenant "%s"', p_slug, p_tenant_id),
      hint = 'Publish it first with conveyor.publish(tenant, document).';
  end if;
  return v_workflow;
end;
$$;

-- Activate or deactivate a workflow: flips its flag and its current subscription.
-- Executions already started are untouched (they finish on their pinned version).
-- Returns true when the flag changed.
drop function if exists conveyor.set_workflow_active(text, text, boolean);
create or replace function conveyor.set_workflow_active(p_tenant_id text, p_slug text, p_active boolean)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_workflow conveyor.workflows;
begin
  perform conveyor.require_tenant(p_tenant_id);
  if p_active is null then
    raise exception using errcode = '22023', message = format('workflow "%s": active must be true or false', p_slug);
  end if;
  v_workflow := conveyor.lock_workflow(p_tenant_id, p_slug);

  update conveyor.subscriptions as s set active = false
  where s.workflow_id = v_workflow.workflow_id and s.active
    and (not p_active or s.version <> v_workflow.current_version);
  update conveyor.subscriptions as s set active = true
  where s.workflow_id = v_workflow.workflow_id and s.version = v_workflow.current_version
    and p_active and not s.active;

  update conveyor.workflows as w set active = p_active, updated_at = now()
  where w.workflow_id = v_workflow.workflow_id and w.active is distinct from p_active;
  return found;
end;
$$;

-- The document of a version (default: the current one), with "active" set to the
-- workflow's current flag: what `conveyor export` writes.
drop function if exists conveyor.export_workflow(text, text, integer);
create or replace function conveyor.export_workflow(p_tenant_id text, p_slug text, p_version integer default null)
returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_document jsonb;
  v_active boolean;
begin
  perform conveyor.require_tenant(p_tenant_id);
  select wv.definition, w.active into v_document, v_active
  from conveyor.workflows as w
  join conveyor.workflow_versions as wv
    on wv.workflow_id = w.workflow_id and wv.version = coalesce(p_version, w.current_version)
  where w.tenant_id = p_tenant_id and w.slug = p_slug;
  if not found then
    raise exception using
      errcode = 'P0002',
      message = case when p_version is null
        then format('workflow "%s" not found for tenant "%s"', p_slug, p_tenant_id)
        else format('workflow "%s" of tenant "%s" has no version %s', p_slug, p_tenant_id, p_version)
      end;
  end if;
  return v_document || jsonb_build_object('active', v_active);
end;
$$;

-- Delete a workflow with all its versions, steps and subscriptions. Refused when it has
-- executions (their history pins its versions): deactivate it instead.
drop function if exists conveyor.delete_workflow(text, text);
create or replace function conveyor.delete_workflow(p_tenant_id text, p_slug text)
returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_workflow conveyor.workflows;
  v_executions bigint;
begin
  perform conveyor.require_tenant(p_tenant_id);
  v_workflow := conveyor.lock_workflow(p_tenant_id, p_slug);
  select count(*) into v_executions from conveyor.executions as x where x.workflow_id = v_workflow.workflow_id;
  if v_executions > 0 then
    raise exception using
      errcode = '55006',
      message = format('workflow "%s" has %s execution(s) and cannot be deleted', p_slug, v_executions),
      detail = 'Executions keep the version they ran, so its definition must stay.',
      hint = format('Deactivate it instead: select conveyor.set_workflow_active(%L, %L, false);', p_tenant_id, p_slug);
  end if;
  delete from conveyor.workflows as w where w.workflow_id = v_workflow.workflow_id;
end;
$$;

revoke all on function conveyor.publish(text, jsonb) from public;
revoke all on function conveyor.set_workflow_active(text, text, boolean) from public;
revoke all on function conveyor.export_workflow(text, text, integer) from public;
revoke all on function conveyor.delete_workflow(text, text) from public;
revoke all on function conveyor.lock_workflow(text, text) from public;
grant execute on function conveyor.publish(text, jsonb) to conveyor_app, conveyor_service;
grant execute on function conveyor.set_workflow_active(text, text, boolean) to conveyor_app, conveyor_service;
grant execute on function conveyor.export_workflow(text, text, integer) to conveyor_app, conveyor_service;
grant execute on function conveyor.delete_workflow(text, text) to conveyor_app, conveyor_service;
