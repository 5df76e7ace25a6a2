-- Later: 0021_verified_tenant.sql rewrites the policies below to compare tenant_id with
-- (select conveyor.current_tenant()), the tenant conveyor.set_tenant verified, not the
-- setting conveyor.tenant_id.

-- Inbound webhooks: a generated, unguessable path and secret per endpoint. Requests reach
-- conveyor.receive_webhook() through `conveyor serve`, which only forwards them.
create table conveyor.webhook_endpoints (
  endpoint_id bigint generated always as identity primary key,
  tenant_id text not null references conveyor.tenants (tenant_id),
  workflow_id bigint not null references conveyor.workflows (workflow_id) on delete cascade,
  -- The URL path segment: 32 random bytes, url-safe.
  path_token text not null unique check (length(path_token) >= 32),
  -- The HMAC key senders sign with. Readable only by the service role (column grants).
  secret text not null check (length(secret) >= 32),
  allowed_methods text[] not null default '{POST}',
  -- Empty: any source address.
  ip_allowlist cidr[] not null default '{}',
  max_body_bytes integer not null default 1048576 check (max_body_bytes > 0),
  -- How far a signature's timestamp may be from the server's clock.
  tolerance interval not null default interval '5 minutes',
  active boolean not null default true,
  call_count bigint not null default 0,
  accepted_count bigint not null default 0,
  last_called_at timestamptz,
  last_status integer,
  created_at timestamptz not null default now(),
  constraint webhook_endpoints_one_per_workflow unique (workflow_id)
);

-- Delivery ids seen per endpoint: a redelivery is acknowledged but does not run again.
create table conveyor.webhook_deliveries (
  endpoint_id bigint not null references conveyor.webhook_endpoints (endpoint_id) on delete cascade,
  delivery_id text not null,
  tenant_id text not null references conveyor.tenants (tenant_id),
  execution_id bigint references conveyor.executions (execution_id) on delete set null,
  received_at timestamptz not null default now(),
  primary key (endpoint_id, delivery_id)
);

create index webhook_deliveries_received_idx on conveyor.webhook_deliveries (received_at);

alter table conveyor.webhook_endpoints enable row level security;
alter table conveyor.webhook_endpoints force row level security;
alter table conveyor.webhook_deliveries enable row level security;
alter table conveyor.webhook_deliveries force row level security;

create policy webhook_endpoints_isolation on conveyor.webhook_endpoints
using (tenant_id = pg_catalog.current_setting('conveyor.tenant_id', true));
create policy webhook_deliveries_isolation on conveyor.webhook_deliveries
using (tenant_id = pg_catalog.current_setting('conveyor.tenant_id', true));

-- Applications may see their endpoints (path, counts) but never the secret column.
grant select (
  endpoint_id, tenant_id, workflow_id, path_token, allowed_methods, ip_allowlist, max_body_bytes,
  tolerance, active, call_count, accepted_count, last_called_at, last_status, created_at
) on conveyor.webhook_endpoints to conveyor_app;
grant select on conveyor.webhook_deliveries to conveyor_app;
grant select, insert, update, delete on conveyor.webhook_endpoints, conveyor.webhook_deliveries
to conveyor_service;

-- Per-tenant API keys for the HTTP API (manual runs). Only a SHA-256 of each key is kept.
create table conveyor.api_keys (
  key_id bigint generated always as identity primary key,
  tenant_id text not null references conveyor.tenants (tenant_id),
  name text not null,
  key_hash bytea not null unique,
  created_at timestamptz not null default now(),
  last_used_at timestamptz,
  revoked_at timestamptz,
  constraint api_keys_name_per_tenant unique (tenant_id, name)
);

alter table conveyor.api_keys enable row level security;
alter table conveyor.api_keys force row level security;
create policy api_keys_isolation on conveyor.api_keys
using (tenant_id = pg_catalog.current_setting('conveyor.tenant_id', true));
grant select (key_id, tenant_id, name, created_at, last_used_at, revoked_at) on conveyor.api_keys to conveyor_app;
grant select, insert, update, delete on conveyor.api_keys to conveyor_service;
