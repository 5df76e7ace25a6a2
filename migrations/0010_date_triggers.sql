-- Later: 0021_verified_tenant.sql rewrites the policies below to compare tenant_id with
-- (select conveyor.current_tenant()), the tenant conveyor.set_tenant verified, not the
-- setting conveyor.tenant_id.

-- Date-based triggers: "30 days after contact.joined_at at 09:00 in the tenant's zone".
-- One pending firing per (workflow, entity) is kept up to date from the watched table's
-- events (dispatch maintains it), and a due-scan fires it once per date value.
create table conveyor.date_triggers (
  workflow_id bigint primary key references conveyor.workflows (workflow_id) on delete cascade,
  tenant_id text not null references conveyor.tenants (tenant_id),
  -- The registered entity (conveyor.entities) and its date or timestamp column.
  entity text not null references conveyor.entities (entity),
  date_column name not null,
  -- Positive: after the date; negative: before it.
  offset_by interval not null,
  -- Local time of day to fire at (null: the date's own time plus the offset).
  at_time time,
  -- A fixed IANA zone; null with timezone_column null means the tenant's zone.
  timezone text,
  -- A column of the entity holding an IANA zone (e.g. the contact's own zone).
  timezone_column name,
  -- How the watched table's events are recognised: their source (module) and entity type.
  event_source text not null,
  event_entity text not null
);

create index date_triggers_event_idx on conveyor.date_triggers (event_source, event_entity, tenant_id);

create table conveyor.date_trigger_firings (
  workflow_id bigint not null references conveyor.date_triggers (workflow_id) on delete cascade,
  entity_id text not null,
  -- The column's value this firing belongs to: fires once per entity per date value.
  date_value timestamptz not null,
  tenant_id text not null references conveyor.tenants (tenant_id),
  due_at timestamptz not null,
  fired_at timestamptz,
  execution_id bigint references conveyor.executions (execution_id) on delete set null,
  primary key (workflow_id, entity_id, date_value)
);

create index date_trigger_firings_due_idx on conveyor.date_trigger_firings (due_at) where fired_at is null;
-- At most one pending firing per entity: a changed date moves it.
create unique index date_trigger_firings_one_pending on conveyor.date_trigger_firings (workflow_id, entity_id)
where fired_at is null;

alter table conveyor.date_triggers enable row level security;
alter table conveyor.date_triggers force row level security;
alter table conveyor.date_trigger_firings enable row level security;
alter table conveyor.date_trigger_firings force row level security;

create policy date_triggers_isolation on conveyor.date_triggers
using (tenant_id = pg_catalog.current_setting('conveyor.tenant_id', true));
create policy date_trigger_firings_isolation on conveyor.date_trigger_firings
using (tenant_id = pg_catalog.current_setting('conveyor.tenant_id', true));

grant select on conveyor.date_triggers, conveyor.date_trigger_firings to conveyor_app;
grant select, insert, update, delete on conveyor.date_triggers, conveyor.date_trigger_firings
to conveyor_service;
