-- Later: 0021_verified_tenant.sql rewrites the policy below to compare tenant_id with
-- (select conveyor.current_tenant()), the tenant conveyor.set_tenant verified in the
-- transaction; the setting conveyor.tenant_id is trusted only for roles outside row-level
-- security (docs/tenancy.md). 0021 also adds the role conveyor_tenant_issuer.

-- Tenancy: every tenant-owned row carries tenant_id, and row-level security limits the
-- application role to the tenant named by the session setting `conveyor.tenant_id`.
--
-- Roles (cluster-wide, created once):
--   conveyor_app      what the platform's application connects as (or is granted):
--                     sees and changes only its current tenant's rows.
--   conveyor_service  the runner and maintenance: not limited by RLS.
do $$
begin
  if not exists (select from pg_catalog.pg_roles where rolname = 'conveyor_app') then
    create role conveyor_app nologin;
  end if;
  if not exists (select from pg_catalog.pg_roles where rolname = 'conveyor_service') then
    create role conveyor_service nologin bypassrls;
  end if;
end
$$;

grant usage on schema conveyor to conveyor_app, conveyor_service;

create table conveyor.tenants (
  tenant_id text primary key check (tenant_id <> ''),
  name text not null,
  timezone text not null default 'UTC',
  plan text not null default 'standard',
  retention_days integer not null default 30 check (retention_days > 0),
  created_at timestamptz not null default now()
);

alter table conveyor.tenants enable row level security;
alter table conveyor.tenants force row level security;

-- A tenant may read its own row; creating tenants is the service role's job.
create policy tenants_isolation on conveyor.tenants
using (tenant_id = pg_catalog.current_setting('conveyor.tenant_id', true));

grant select on conveyor.tenants to conveyor_app;
grant select, insert, update, delete on conveyor.tenants to conveyor_service;
