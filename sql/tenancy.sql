-- Tenancy: which tenant a transaction acts for, proven by the platform, and the guard
-- every application function calls first.
--
-- How a platform uses it (docs/tenancy.md)
-- -----------------------------------------
-- The platform's application role is granted the RLS-limited role. The platform's backend
-- authenticates its user, then opens a transaction on its (pooled) connection and proves
-- the tenant with a signed token:
--
--   grant conveyor_app to my_app_role;              -- once, as an administrator
--   begin;                                          -- per request
--   select conveyor.set_tenant(:token);             -- a token for 'acme'
--   select conveyor.emit('acme', 'crm.contact.created', '{"id": 7}');
--   commit;                                         -- the tenant context ends here
--
-- A token is `v1.<expiry, unix seconds>.<tenant id>.<hex HMAC-SHA256 of everything before
-- the last dot>`, keyed by conveyor.tenancy_config.token_secret. The platform mints it in
-- its own code with that secret, or through conveyor.mint_tenant_token (for the service
-- role and conveyor_tenant_issuer). set_tenant records the tenant in the transaction-local
-- setting conveyor.tenant_context with a MAC over (tenant, backend pid, transaction start)
-- that current_tenant() checks: the role cannot write a context of its own, nor carry one
-- to another transaction or connection. Transaction scope because pooled connections
-- (PgBouncer in transaction mode) hand each transaction to whichever client comes next:
-- the context cannot outlive the request that proved it.
--
-- Row-level security limits every conveyor table to conveyor.current_tenant()'s rows, and
-- the application functions (emit, publish, trigger, ...) refuse to act for another
-- tenant. A transaction of the RLS-limited role without a verified tenant sees nothing and
-- may do nothing.
--
-- The plain setting conveyor.tenant_id names the tenant for roles outside row-level
-- security (superusers, BYPASSRLS roles such as conveyor_service: they may act for any
-- tenant, and if they set it the functions hold them to it), and for conveyor_app only
-- where the installation opts in: `update conveyor.tenancy_config set
-- trust_tenant_setting = true` as the owner (any client can set a custom setting itself,
-- so the opt-in lives in a table the application role cannot write). Note that BYPASSRLS
-- is not inherited through role membership: a runner's login role either has BYPASSRLS
-- itself or runs `set role conveyor_service`.
--
-- Tenants are created by the service role: conveyor.create_tenant(id, name, timezone).

-- A key of 48 bytes, 366 of its bits random (gen_random_uuid is cryptographically random).
create or replace function conveyor.random_key() returns bytea
language sql
volatile
set search_path = ''
as $$
  select
    pg_catalog.uuid_send(gen_random_uuid()) || pg_catalog.uuid_send(gen_random_uuid())
    || pg_catalog.uuid_send(gen_random_uuid());
$$;

-- The MAC that binds a tenant context to this backend and this transaction: HMAC's nested
-- construction with two independent random keys, so no key padding per call. The
-- transaction start is read as epoch seconds, which no session setting changes. No SET
-- clause, unlike the house rule: a function with one is never inlined, and current_tenant
-- runs this once per statement. It is not security definer and names only pg_catalog.
create or replace function conveyor.tenant_context_mac(
  p_tenant_id text,
  p_inner_key bytea,
  p_outer_key bytea
) returns text
language sql
stable
as $$
  select pg_catalog.encode(pg_catalog.sha256(p_outer_key || pg_catalog.sha256(p_inner_key || pg_catalog.convert_to(
    pg_catalog.pg_backend_pid()::text || '.' || extract(epoch from pg_catalog.transaction_timestamp())::text
    || '.' || p_tenant_id, 'UTF8'))), 'hex');
$$;

-- The tenant this transaction acts for, or null: the tenant conveyor.set_tenant verified in
-- this transaction; else the plain setting conveyor.tenant_id where it is trusted (roles
-- outside row-level security, or the installation's opt-in). A context that set_tenant did
-- not write in this transaction on this connection is an error, not a silent null.
-- Policies call it as `(select conveyor.current_tenant())`: once per statement. Parallel
-- restricted: a worker has its own pid, so only the leader can check the context.
create or replace function conveyor.current_tenant() returns text
language plpgsql
stable
parallel restricted
security definer
set search_path = ''
as $$
declare
  v_context text := pg_catalog.current_setting('conveyor.tenant_context', true);
  v_config conveyor.tenancy_config;
  v_tenant text;
  v_setting text;
begin
  if v_context <> '' then
    -- A plain comparison: timing could only leak this transaction's MAC, and no clock
    -- behind a SQL statement resolves a byte-wise compare of 64 characters.
    select * into v_config from conveyor.tenancy_config;
    v_tenant := pg_catalog.substr(v_context, 66);
    if v_context !~ '^[0-9a-f]{64}\.'
      or pg_catalog.left(v_context, 64)
      <> conveyor.tenant_context_mac(v_tenant, v_config.context_inner_key, v_config.context_outer_key)
      then
      raise exception using
        errcode = '28000',
        message = 'the tenant context was not set by conveyor.set_tenant in this transaction',
        detail = 'conveyor.tenant_context holds a value written directly, or carried over from another '
        'transaction or connection.',
        hint = 'Call conveyor.set_tenant(<token>) in each transaction that acts for a tenant; '
        'never set conveyor.tenant_context yourself.';
    end if;
    return v_tenant;
  end if;
  v_setting := nullif(pg_catalog.current_setting('conveyor.tenant_id', true), '');
  if v_setting is null then
    return null;
  end if;
  if not conveyor.caller_subject_to_rls()
    or (select c.trust_tenant_setting from conveyor.tenancy_config as c)
    then
    return v_setting;
  end if;
  return null;
end;
$$;

-- Whether the role calling into conveyor is limited by row-level security.
-- Inside a security definer function current_user is the function's owner, so the
-- calling role is the one the session set with SET ROLE (the `role` setting), else the
-- session user. The invoker (current_user) counts too, for calls that are not wrapped
-- in a security definer function.
create or replace function conveyor.caller_subject_to_rls() returns boolean
language sql
stable
set search_path = ''
as $$
  select exists (
    select
    from pg_catalog.pg_roles as r
    where
      r.rolname in (
        current_user,
        coalesce(nullif(pg_catalog.current_setting('role'), 'none'), session_user)
      )
      and not (r.rolsuper or r.rolbypassrls)
  );
$$;

-- Raises 42501 unless the caller may act for p_tenant_id: the transaction's tenant
-- (conveyor.current_tenant) must be that tenant when there is one, and there must be one
-- when the caller is subject to row-level security.
create or replace function conveyor.require_tenant(p_tenant_id text) returns void
language plpgsql
stable
set search_path = ''
as $$
declare
  v_session_tenant text := conveyor.current_tenant();
begin
  if p_tenant_id is null or p_tenant_id = '' then
    raise exception using
      errcode = '22023',
      message = 'a tenant id is required',
      hint = 'Pass the tenant the call acts for as the first argument.';
  end if;
  if v_session_tenant is not null and v_session_tenant <> p_tenant_id then
    raise exception using
      errcode = '42501',
      message = format('tenant %L is not this session''s tenant', p_tenant_id),
      detail = format('The session acts for tenant %L.', v_session_tenant),
      hint = 'A transaction acts for one tenant: call conveyor.set_tenant with a token for the tenant to act for.';
  end if;
  if v_session_tenant is null and conveyor.caller_subject_to_rls() then
    raise exception using
      errcode = '42501',
      message = format('no tenant is set for this session, so it may not act for tenant %L', p_tenant_id),
      detail = format(
        'Role %I is limited by row-level security and this transaction has no verified tenant%s.',
        coalesce(nullif(pg_catalog.current_setting('role'), 'none'), session_user),
        case
          when pg_catalog.current_setting('conveyor.tenant_id', true) <> ''
            then ' (conveyor.tenant_id is not trusted for it: see conveyor.tenancy_config.trust_tenant_setting)'
          else ''
        end
      ),
      hint = format('Call conveyor.set_tenant(<a token for %L>) in the same transaction first.', p_tenant_id);
  end if;
end;
$$;

-- A token proving p_tenant_id until now + p_valid_for, for the platform's backend to hand
-- to conveyor.set_tenant. The platform may instead mint it in its own code (docs/tenancy.md).
create or replace function conveyor.mint_tenant_token(
  p_tenant_id text,
  p_valid_for interval default interval '15 minutes'
) returns text
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
  v_payload text;
begin
  if p_valid_for is null or p_valid_for <= interval '0' then
    raise exception using
      errcode = '22023',
      message = format('a tenant token must be valid for a positive interval, not %s', coalesce(p_valid_for::text, 'null'));
  end if;
  if not exists (select from conveyor.tenants as t where t.tenant_id = p_tenant_id) then
    raise exception using
      errcode = '22023',
      message = format('tenant %L does not exist', p_tenant_id);
  end if;
  v_payload := format(
    'v1.%s.%s', pg_catalog.ceil(extract(epoch from pg_catalog.clock_timestamp() + p_valid_for))::bigint, p_tenant_id
  );
  return v_payload || '.' || pg_catalog.encode(conveyor.hmac_sha256(
    (select c.token_secret from conveyor.tenancy_config as c), pg_catalog.convert_to(v_payload, 'UTF8')
  ), 'hex');
end;
$$;

-- Proves the tenant this transaction acts for and returns it; null or '' clears the
-- context. Refused (28000) when the token is malformed, not signed with this
-- installation's secret, expired, or names a tenant that does not exist.
create or replace function conveyor.set_tenant(p_token text) returns text
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
  -- 1: the signed payload, 2: expiry, 3: tenant id, 4: signature
  v_token text[] := pg_catalog.regexp_match(p_token, '^(v1\.([0-9]{1,12})\.(.+))\.([0-9a-f]{64})$');
  v_expires timestamptz;
begin
  if p_token is null or p_token = '' then
    perform pg_catalog.set_config('conveyor.tenant_context', '', true);
    return null;
  end if;
  if v_token is null then
    raise exception using
      errcode = '28000',
      message = 'tenant token refused: it is malformed',
      detail = 'A tenant token is v1.<expiry in unix seconds>.<tenant id>.<64 hex digits of HMAC-SHA256>.',
      hint = 'Mint tokens with conveyor.mint_tenant_token or as docs/tenancy.md shows.';
  end if;
  if not conveyor.constant_time_equals(
    pg_catalog.encode(conveyor.hmac_sha256(
      (select c.token_secret from conveyor.tenancy_config as c), pg_catalog.convert_to(v_token[1], 'UTF8')
    ), 'hex'),
    v_token[4]
  ) then
    raise exception using
      errcode = '28000',
      message = 'tenant token refused: its signature does not match',
      detail = 'It was not minted with this installation''s token secret (or the secret was rotated since), '
      'or it was altered.';
  end if;
  v_expires := pg_catalog.to_timestamp(v_token[2]::bigint);
  if v_expires <= pg_catalog.clock_timestamp() then
    raise exception using
      errcode = '28000',
      message = format('tenant token refused: the token for tenant %L expired at %s', v_token[3], v_expires),
      hint = 'Mint a token per request, valid for little longer than the request.';
  end if;
  if not exists (select from conveyor.tenants as t where t.tenant_id = v_token[3]) then
    raise exception using
      errcode = '28000',
      message = format('tenant token refused: tenant %L does not exist', v_token[3]);
  end if;
  perform pg_catalog.set_config(
    'conveyor.tenant_context',
    conveyor.tenant_context_mac(v_token[3], c.context_inner_key, c.context_outer_key) || '.' || v_token[3],
    true
  ) from conveyor.tenancy_config as c;
  return v_token[3];
end;
$$;

-- New keys for tenant tokens and contexts: every token minted before is refused from now
-- on. For the owner (no other role may execute it, nor read conveyor.tenancy_config).
create or replace function conveyor.rotate_tenant_keys() returns timestamptz
language sql
volatile
set search_path = ''
as $$
  update conveyor.tenancy_config
  set
    token_secret = conveyor.random_key(), context_inner_key = conveyor.random_key(),
    context_outer_key = conveyor.random_key(), keys_rotated_at = pg_catalog.now()
  returning keys_rotated_at;
$$;

-- Creates a tenant and returns its id. For the service role and administrators (the
-- application role cannot write conveyor.tenants). A tenant id that exists already is
-- an error (23505), never a silent overwrite. p_plan: one of conveyor.plans (docs/plans.md);
-- by default 'standard', which limits nothing.
drop function if exists conveyor.create_tenant(text, text, text);
create or replace function conveyor.create_tenant(
  p_tenant_id text,
  p_name text,
  p_timezone text default 'UTC',
  p_plan text default 'standard'
) returns text
language plpgsql
set search_path = ''
as $$
declare
  v_created text;
begin
  if p_tenant_id is null or p_tenant_id !~ '^[A-Za-z0-9][A-Za-z0-9_.:-]*$' then
    raise exception using
      errcode = '22023',
      message = format('invalid tenant id %L', p_tenant_id),
      hint = 'A tenant id starts with a letter or digit and holds letters, digits and _ . : - only.';
  end if;
  if p_name is null or btrim(p_name) = '' then
    raise exception using
      errcode = '22023',
      message = format('tenant %L needs a name', p_tenant_id);
  end if;
  begin
    perform now() at time zone coalesce(p_timezone, '');
  exception
    when invalid_parameter_value then
      raise exception using
        errcode = '22023',
        message = format('tenant %L: unknown timezone %L', p_tenant_id, p_timezone),
        hint = 'Use an IANA timezone name such as Europe/Berlin or UTC.';
  end;

  if not exists (select from conveyor.plans as p where p.name = p_plan) then
    raise exception using
      errcode = '22023',
      message = format('tenant %L: unknown plan %L (plans: %s)', p_tenant_id, p_plan,
        (select string_agg(p.name, ', ' order by p.name) from conveyor.plans as p)),
      hint = 'Add a plan with conveyor.set_plan(name, limits).';
  end if;

  insert into conveyor.tenants (tenant_id, name, timezone, plan)
  values (p_tenant_id, p_name, p_timezone, p_plan)
  on conflict (tenant_id) do nothing
  returning tenant_id into v_created;

  if v_created is null then
    raise exception using
      errcode = '23505',
      message = format('tenant %L exists already', p_tenant_id);
  end if;
  return v_created;
end;
$$;

-- Who may execute these: sql/grants.sql.
