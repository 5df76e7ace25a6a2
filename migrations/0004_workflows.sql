-- Later: 0022_wait_registrations.sql replaces workflow_steps_kind_check below (adding the
-- kind wait_until), and 0027_fanouts.sql (adding split, parallel, for_each and call). 0021_verified_tenant.sql rewrites the policies below to compare
-- tenant_id with (select conveyor.current_tenant()), the tenant conveyor.set_tenant
-- verified, not the setting conveyor.tenant_id.

-- Workflows, their immutable versions, the compiled step graph, and subscriptions.
-- conveyor.publish() validates a definition document and writes one new version:
-- a workflow_versions row, one workflow_steps row per step and (for event triggers)
-- one subscriptions row. Nothing here is ever updated in place except the workflow's
-- header (active flag, current version, names).
create table conveyor.workflows (
  workflow_id bigint generated always as identity primary key,
  tenant_id text not null references conveyor.tenants (tenant_id),
  slug text not null check (slug ~ '^[a-z0-9][a-z0-9-]*$'),
  name text not null,
  description text,
  category text,
  tags text[] not null default '{}',
  active boolean not null default true,
  current_version integer,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint workflows_slug_per_tenant unique (tenant_id, slug)
);

create table conveyor.workflow_versions (
  workflow_id bigint not null references conveyor.workflows (workflow_id) on delete cascade,
  version integer not null check (version > 0),
  tenant_id text not null references conveyor.tenants (tenant_id),
  -- The document as published (after defaults were filled in), for export and diff.
  definition jsonb not null,
  entry_step text,
  -- Settings, copied out of the document so dispatch reads columns, not JSON.
  run_once_per_entity boolean not null default false,
  max_executions_per_hour integer check (max_executions_per_hour > 0),
  max_concurrent integer check (max_concurrent > 0),
  timeout interval,
  -- {"attempts": 3, "backoff": "exponential", "initial": "30s", "max": "1h"}
  retry_policy jsonb not null default '{"attempts": 1}',
  -- 'fail' | 'continue' (the default error policy of steps)
  on_error text not null default 'fail' check (on_error in ('fail', 'continue')),
  max_steps integer not null default 1000 check (max_steps > 0),
  published_at timestamptz not null default now(),
  primary key (workflow_id, version)
);

alter table conveyor.workflows
add constraint workflows_current_version_fk foreign key (workflow_id, current_version)
references conveyor.workflow_versions (workflow_id, version) deferrable initially deferred;

-- The compiled graph: the interpreter follows next_step / branches by primary key.
create table conveyor.workflow_steps (
  workflow_id bigint not null,
  version integer not null,
  step_id text not null,
  tenant_id text not null references conveyor.tenants (tenant_id),
  -- Document order, 0-based.
  position integer not null check (position >= 0),
  -- condition | switch | set_variable | transform | stop | emit | data | delay
  -- | wait_for_event | action
  kind text not null check (kind in (
    'condition', 'switch', 'set_variable', 'transform', 'stop', 'emit', 'data', 'delay',
    'wait_for_event', 'action'
  )),
  -- For kind = 'action': email.send, webhook.send, ...; for kind = 'data': data.lookup, ...
  action_type text,
  -- The step's own configuration (condition tree, `with` inputs, delay spec, ...), with
  -- templates left unrendered: they are rendered per execution. It is the step object as
  -- written minus its routing keys (id, next, then, else, default, on_event, on_timeout,
  -- on_error, retry, timeout), so config->'if', config->'with', config->'connection',
  -- config->'delay', config->'data', config->'transform', ... (see docs/workflow-format.md).
  config jsonb not null default '{}',
  -- Where to go when the step succeeds without choosing a branch; null ends the execution.
  next_step text,
  -- Branch targets: condition {"then": id|null, "else": id|null}; switch {"cases":
  -- [{"when": condition, "goto": id}], "default": id|null}; wait_for_event {"event": id,
  -- "timeout": id}. A null target ends the execution.
  branches jsonb,
  -- 'fail' | 'continue' | 'retry' | 'goto' (then error_step)
  on_error text not null default 'fail' check (on_error in ('fail', 'continue', 'retry', 'goto')),
  error_step text,
  -- {"attempts": n, "backoff": "exponential"|"fixed", "initial": "30s", "max": "1h", "jitter": true}
  retry_policy jsonb not null default '{"attempts": 1}',
  -- The external action's timeout (what the runner's visibility timeout derives from).
  timeout interval not null default interval '30 seconds',
  primary key (workflow_id, version, step_id),
  foreign key (workflow_id, version) references conveyor.workflow_versions (workflow_id, version)
  on delete cascade,
  constraint workflow_steps_action_type check ((kind in ('action', 'data')) = (action_type is not null)),
  constraint workflow_steps_goto_has_target check ((on_error = 'goto') = (error_step is not null))
);

-- Versions and their compiled steps never change once published: executions pin them,
-- and a changed row would silently change what a running execution does.
create function conveyor.refuse_update() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  raise exception using
    errcode = '55000',
    message = format('conveyor.%s rows are immutable once published', tg_table_name),
    hint = 'Publish a new version of the workflow instead (conveyor.publish).';
end;
$$;

create trigger workflow_versions_immutable before update on conveyor.workflow_versions
for each row execute function conveyor.refuse_update();
create trigger workflow_steps_immutable before update on conveyor.workflow_steps
for each row execute function conveyor.refuse_update();

-- Which events start which workflow version. match_key is the event type, or a pattern
-- with a trailing wildcard ('crm.deal.*', 'crm.*', '*'): dispatch expands each event's
-- type into its four keys and joins by equality, so matching cost does not grow with the
-- number of subscriptions on other event types.
create table conveyor.subscriptions (
  subscription_id bigint generated always as identity primary key,
  tenant_id text not null references conveyor.tenants (tenant_id),
  workflow_id bigint not null references conveyor.workflows (workflow_id) on delete cascade,
  version integer not null,
  match_key text not null check (match_key ~ '^(\*|[a-z][a-z0-9_]*\.\*|[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*\.(\*|[a-z][a-z0-9_]*))$'),
  source text,
  -- The payload filter ({"payload.amount": {"$gte": 100}}) or null.
  filter jsonb,
  -- The filter compiled by conveyor.compile_filter at publish time: dispatch evaluates it
  -- with jsonb_path_match(<trigger object>, filter_path). Null when there is no filter.
  filter_path jsonpath,
  -- An optional condition tree in the step condition language, evaluated at dispatch
  -- (how "status changed from open to won" is expressed).
  condition jsonb,
  active boolean not null default true,
  foreign key (workflow_id, version) references conveyor.workflow_versions (workflow_id, version)
  on delete cascade
);

create index subscriptions_match_idx on conveyor.subscriptions (match_key, tenant_id) where active;
create unique index subscriptions_one_active_per_workflow on conveyor.subscriptions (workflow_id)
where active;

alter table conveyor.workflows enable row level security;
alter table conveyor.workflows force row level security;
alter table conveyor.workflow_versions enable row level security;
alter table conveyor.workflow_versions force row level security;
alter table conveyor.workflow_steps enable row level security;
alter table conveyor.workflow_steps force row level security;
alter table conveyor.subscriptions enable row level security;
alter table conveyor.subscriptions force row level security;

create policy workflows_isolation on conveyor.workflows
using (tenant_id = pg_catalog.current_setting('conveyor.tenant_id', true));
create policy workflow_versions_isolation on conveyor.workflow_versions
using (tenant_id = pg_catalog.current_setting('conveyor.tenant_id', true));
create policy workflow_steps_isolation on conveyor.workflow_steps
using (tenant_id = pg_catalog.current_setting('conveyor.tenant_id', true));
create policy subscriptions_isolation on conveyor.subscriptions
using (tenant_id = pg_catalog.current_setting('conveyor.tenant_id', true));

grant select on conveyor.workflows, conveyor.workflow_versions, conveyor.workflow_steps,
conveyor.subscriptions to conveyor_app;
grant select, insert, update, delete on conveyor.workflows, conveyor.workflow_versions,
conveyor.workflow_steps, conveyor.subscriptions to conveyor_service;
