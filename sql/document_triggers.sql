-- A workflow document's trigger: an event (with filter and condition), a manual run, a
-- schedule, an inbound webhook or a date on an entity's rows. Called by
-- conveyor.validate_workflow (sql/workflow_validation.sql).


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
          'trigger.date.entity: entity "%s" is not watched (`conveyor tables watch %s --module M` first: its changes move '
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
