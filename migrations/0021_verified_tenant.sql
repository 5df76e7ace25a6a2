-- A verified tenant context. Until now row-level security read the setting
-- conveyor.tenant_id, which any client may set for itself: a session of conveyor_app could
-- name any tenant and read its rows. Now the platform proves the tenant with a signed
-- token (conveyor.set_tenant, sql/tenancy.sql) and every policy reads only
-- conveyor.current_tenant(), which returns the tenant that token proved for this
-- transaction. The plain setting is trusted for conveyor_app only where the installation
-- opts in (tenancy_config.trust_tenant_setting, writable by the owner alone).

-- Platform code that mints tokens through SQL (conveyor.mint_tenant_token) without the
-- service role's BYPASSRLS: its login role is granted this one.
do $$
begin
  if not exists (select from pg_catalog.pg_roles where rolname = 'conveyor_tenant_issuer') then
    create role conveyor_tenant_issuer nologin;
  end if;
end
$$;
grant usage on schema conveyor to conveyor_tenant_issuer;

-- One row: the installation's keys and its opt-in. No role but the owner reads or writes
-- it (no grants): conveyor_app must not learn the keys nor switch the opt-in on.
--   token_secret       HMAC-SHA256 key of tenant tokens (the platform may mint with it)
--   context_*_key      keys of the per-transaction context's MAC (never leave the database)
--   trust_tenant_setting  whether conveyor.tenant_id alone names the tenant for conveyor_app
create table conveyor.tenancy_config (
  singleton boolean primary key default true check (singleton),
  token_secret bytea not null default (
    pg_catalog.uuid_send(gen_random_uuid()) || pg_catalog.uuid_send(gen_random_uuid())
  ) check (length(token_secret) >= 32),
  context_inner_key bytea not null default (
    pg_catalog.uuid_send(gen_random_uuid()) || pg_catalog.uuid_send(gen_random_uuid())
  ) check (length(context_inner_key) >= 32),
  context_outer_key bytea not null default (
    pg_catalog.uuid_send(gen_random_uuid()) || pg_catalog.uuid_send(gen_random_uuid())
  ) check (length(context_outer_key) >= 32),
  trust_tenant_setting boolean not null default false,
  keys_rotated_at timestamptz not null default now()
);
insert into conveyor.tenancy_config default values;
revoke all on conveyor.tenancy_config from public;

-- The policies call conveyor.current_tenant(), whose body is sql/tenancy.sql's (applied
-- after the migrations, in the same transaction). A database migrated from scratch does
-- not have it yet: declared here until then, naming no tenant (every policy sees nothing).
do $$
begin
  if pg_catalog.to_regprocedure('conveyor.current_tenant()') is null then
    create function conveyor.current_tenant() returns text
    language sql
    stable
    set search_path = ''
    as 'select null::text';
  end if;
end
$$;

-- Every tenant policy in the schema compared tenant_id with the plain setting; each now
-- compares it with the verified tenant, read once per statement (an init plan), not per
-- row. Policies of later migrations are written this way from the start.
do $$
declare
  v_policy record;
begin
  for v_policy in
    select p.polname, c.oid::regclass as rel
    from pg_catalog.pg_policy as p
    join pg_catalog.pg_class as c on c.oid = p.polrelid
    where
      c.relnamespace = 'conveyor'::regnamespace
      and pg_catalog.pg_get_expr(p.polqual, p.polrelid)
      = '(tenant_id = current_setting(''conveyor.tenant_id''::text, true))'
  loop
    execute format(
      'alter policy %I on %s using (tenant_id = (select conveyor.current_tenant()))',
      v_policy.polname, v_policy.rel
    );
  end loop;
end
$$;
