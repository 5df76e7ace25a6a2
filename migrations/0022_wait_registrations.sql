-- Wait registrations: one row per execution waiting for a correlated event
-- (wait_for_event) or for a platform row's state (wait_until), keyed so that the matcher of
-- an event finds only the waits that event can answer (sql/waits.sql explains the
-- matching and why it misses nothing).
--
-- Before, dispatch scanned and locked every event-waiting execution of the event's tenant
-- and read each one's step run to learn what it waited for, so the cost of an event and
-- the rows it locked grew with the tenant's waits on other events.
create table conveyor.waits (
  -- deferred: the interpreter registers a new execution's wait before it inserts the
  -- execution (each new execution is written once, in the state it reached)
  execution_id bigint primary key references conveyor.executions (execution_id) on delete cascade
  deferrable initially deferred,
  tenant_id text not null,
  -- what answers the wait: an event type or pattern ('email.message.replied', 'email.*',
  -- '*') of wait_for_event, or 'entity:<entity>' (a captured change of that entity) of
  -- wait_until
  event_key text not null,
  -- the correlation: dotted paths into the event's trigger object and the values (as text)
  -- they must have, rendered when the wait began, in the same order
  match_paths text[] not null,
  match_values text[] not null,
  -- the look-back point: an event that occurred at or after it counts
  since timestamptz not null,
  -- wait_until: the entity, row id and condition, checked on the row
  entity text,
  entity_id text,
  condition jsonb,
  step_id text not null,
  registered_at timestamptz not null default now(),
  -- the registering transaction: its own confirmation would not prove anything
  registered_by xid8 not null default pg_catalog.pg_current_xact_id(),
  -- false until a transaction that began after the registration committed has looked
  -- back once more (conveyor.confirm_waits)
  confirmed boolean not null default false,
  check ((entity is null) = (condition is null))
);

create index waits_key_idx on conveyor.waits (tenant_id, event_key, match_values);
create index waits_unconfirmed_idx on conveyor.waits (registered_at) where not confirmed;

-- The wait steps of a tenant, read by dispatch for the correlations its waits can have.
create index workflow_steps_waits_idx on conveyor.workflow_steps (tenant_id)
where kind in ('wait_for_event', 'wait_until');

-- The look-back of a wait: a tenant's events of one type since a point in time.
create index events_tenant_type_time_idx on conveyor.events (tenant_id, event_type, occurred_at);

alter table conveyor.waits enable row level security;
alter table conveyor.waits force row level security;
create policy waits_isolation on conveyor.waits
using (tenant_id = (select conveyor.current_tenant()));

grant select on conveyor.waits to conveyor_app;
grant select, insert, update, delete on conveyor.waits to conveyor_service;

-- Executions already waiting for an event are registered as they are (their look-back
-- starts at their trigger, and their first confirmation looks back once).
insert into conveyor.waits (
  execution_id, tenant_id, event_key, match_paths, match_values, since, step_id, registered_at
)
select
  x.execution_id,
  x.tenant_id,
  r.input ->> 'event' as event_key,
  m.paths as match_paths,
  m.vals as match_values,
  coalesce((x.trigger ->> 'occurred_at')::timestamptz, x.created_at) as since,
  x.current_step as step_id,
  now() as registered_at
from conveyor.executions as x
inner join conveyor.step_runs as r
  on x.execution_id = r.execution_id and x.current_step = r.step_id and r.status = 'running'
cross join
  lateral (
    select
      coalesce(array_agg(k.key order by pg_catalog.convert_to(k.key, 'UTF8')), '{}') as paths,
      coalesce(array_agg(k.value #>> '{}' order by pg_catalog.convert_to(k.key, 'UTF8')), '{}') as vals
    from jsonb_each(coalesce(r.input -> 'match', '{}')) as k
  ) as m
where x.status = 'waiting' and x.wait_kind = 'event' and r.input ? 'event';

-- Dispatch finds waits through conveyor.waits now.
drop index conveyor.executions_waiting_event_idx;

-- The step kind wait_until.
alter table conveyor.workflow_steps drop constraint workflow_steps_kind_check;
alter table conveyor.workflow_steps add constraint workflow_steps_kind_check check (kind in (
  'action', 'condition', 'switch', 'set_variable', 'transform', 'stop', 'emit', 'data', 'delay',
  'wait_for_event', 'wait_until'
));
