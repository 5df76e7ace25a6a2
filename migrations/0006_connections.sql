-- Later: 0021_verified_tenant.sql rewrites the policies below to compare tenant_id with
-- (select conveyor.current_tenant()), the tenant conveyor.set_tenant verified, not the
-- setting conveyor.tenant_id.

-- Connections: the credentials and endpoints actions use (an SMTP server, a webhook
-- signing secret, a Slack or Discord incoming-webhook URL, an SMS provider account).
-- A step names a connection; the runner loads it by (tenant_id, name).
--
-- `config` holds what is not secret (host, port, username, account sid, base URL).
-- `secret` holds a JSON object of the secret fields (password, auth token, webhook
-- URL, signing secret), encrypted by the runner with Fernet under the key(s) in
-- CONVEYOR_SECRET_KEY. The database never sees a secret in clear text, so neither
-- step inputs, outputs, logs nor a database dump can leak one.
create table conveyor.connections (
  tenant_id text not null references conveyor.tenants (tenant_id),
  name text not null check (name ~ '^[a-z0-9][a-z0-9_.-]*$'),
  -- smtp | webhook | slack | discord | twilio
  kind text not null check (kind in ('smtp', 'webhook', 'slack', 'discord', 'twilio')),
  config jsonb not null default '{}' check (pg_catalog.jsonb_typeof(config) = 'object'),
  secret bytea,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  primary key (tenant_id, name)
);

alter table conveyor.connections enable row level security;
alter table conveyor.connections force row level security;

create policy connections_isolation on conveyor.connections
using (tenant_id = pg_catalog.current_setting('conveyor.tenant_id', true));

-- The application may see which connections its tenant has (never the clear secret:
-- it is only ever stored encrypted); creating and changing them is the service's job.
grant select (tenant_id, name, kind, config, created_at, updated_at) on conveyor.connections to conveyor_app;
grant select, insert, update, delete on conveyor.connections to conveyor_service;

-- Wake runners when an action is queued: pgmq notifies channel
-- "pgmq.q_conveyor_actions.INSERT" after an insert, at most once per 250 ms (the
-- runner drains the queue after each wakeup and polls as a fallback, so throttled
-- notifications lose nothing).
select pgmq.enable_notify_insert('conveyor_actions', 250);

-- What the runner needs when it connects as (a member of) conveyor_service rather than
-- as a superuser: the schema check, its heartbeat, and reading/renewing queue messages
-- (conveyor.write_back archives them as its owner).
grant select on conveyor.schema_migrations to conveyor_service;
grant select, insert, update on conveyor.runners to conveyor_service;
grant usage on schema pgmq to conveyor_service;
grant select, update on pgmq.q_conveyor_actions to conveyor_service;
