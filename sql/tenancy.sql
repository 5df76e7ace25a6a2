-- Tenancy: which tenant a session acts for, and the guard every application function
-- calls first.
--
-- How a platform uses it
-- ----------------------
-- The platform's application role is granted the RLS-limited role, and each request
-- (or transaction) names its tenant in the session setting `conveyor.tenant_id`:
--
--   grant conveyor_app to my_app_role;            -- once, as an administrator
--   set conveyor.tenant_id = 'acme';              -- per session, or per transaction:
--   select set_config('conveyor.tenant_id', 'acme', true);
--   select conveyor.emit('acme', 'crm.contact.created', '{"id": 7}');
--
-- Row-level security then limits every conveyor table to that tenant's rows, and the
-- application functions (emit, publish, trigger, ...) refuse to act for another tenant.
-- A session of the RLS-limited role without a tenant sees nothing and may do nothing.
--
-- Roles that are not subject to row-level security (superusers, and roles with
-- BYPASSRLS such as conveyor_service) may act for any tenant; if they set
-- conveyor.tenant_id, the functions hold them to it too. Note that BYPASSRLS is not
-- inherited through role membership: a runner's login role either has BYPASSRLS
-- itself or runs `set role conveyor_service`.
--
-- Tenants are created by the service role: conveyor.create_tenant(id, name, timezone).

-- The session's tenant, or null when none is set (unset, or reset to '').
create or replace function conveyor.current_tenant() returns text
language sql
stable
parallel safe
set search_path = ''
as $$
  select nullif(pg_catalog.current_setting('conveyor.tenant_id', true), '');
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

-- Raises 42501 unless the caller may act for p_tenant_id: the session's tenant
-- (conveyor.tenant_id) must be that tenant when it is set, and it must be set when the
-- caller is subject to row-level security.
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
      detail = format('The session acts for tenant %L (conveyor.tenant_id).', v_session_tenant),
      hint = 'A session acts for one tenant; set conveyor.tenant_id to change it.';
  end if;
  if v_session_tenant is null and conveyor.caller_subject_to_rls() then
    raise exception using
      errcode = '42501',
      message = format('no tenant is set for this session, so it may not act for tenant %L', p_tenant_id),
      detail = format(
        'Role %I is limited by row-level security and conveyor.tenant_id is not set.',
        coalesce(nullif(pg_catalog.current_setting('role'), 'none'), session_user)
      ),
      hint = format('Run: set conveyor.tenant_id = %L', p_tenant_id);
  end if;
end;
$$;

-- Creates a tenant and returns its id. For the service role and administrators (the
-- application role cannot write conveyor.tenants). A tenant id that exists already is
-- an error (23505), never a silent overwrite.
create or replace function conveyor.create_tenant(
  p_tenant_id text,
  p_name text,
  p_timezone text default 'UTC'
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

  insert into conveyor.tenants (tenant_id, name, timezone)
  values (p_tenant_id, p_name, p_timezone)
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

-- Application functions are granted explicitly; administration is not public.
revoke execute on function conveyor.create_tenant(text, text, text) from public;
grant execute on function conveyor.create_tenant(text, text, text) to conveyor_service;
grant execute on function conveyor.current_tenant(), conveyor.caller_subject_to_rls(),
conveyor.require_tenant(text) to conveyor_app, conveyor_service;
