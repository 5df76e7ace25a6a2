-- Inbound webhooks and the HTTP API's manual runs. `conveyor serve` forwards each request
-- to one of these functions and sends back the status and body they return: every
-- decision (method, source address, size, signature, replay, duplicates) is made here.
--
-- Signature (documented for senders): header
--   X-Conveyor-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>
-- Redeliveries carry the same X-Conveyor-Delivery id and are acknowledged without a run.
-- The delivery id is not signed, so an accepted signature is remembered while its t= is
-- within the tolerance (conveyor.webhook_signatures) and a request reusing it is refused.

-- HMAC-SHA256 (RFC 2104) on the built-in sha256(), so no extension is needed.
create or replace function conveyor.hmac_sha256(p_key bytea, p_message bytea)
returns bytea
language plpgsql
immutable
strict
set search_path = ''
as $$
declare
  v_key bytea := case when length(p_key) > 64 then sha256(p_key) else p_key end;
  v_inner bytea := '\x'::bytea;
  v_outer bytea := '\x'::bytea;
  v_byte integer;
begin
  v_key := v_key || pg_catalog.decode(pg_catalog.repeat('00', 64 - length(v_key)), 'hex');
  v_inner := v_key;
  v_outer := v_key;
  for i in 0..63 loop
    v_byte := pg_catalog.get_byte(v_key, i);
    v_inner := pg_catalog.set_byte(v_inner, i, v_byte # 54);  -- 0x36
    v_outer := pg_catalog.set_byte(v_outer, i, v_byte # 92);  -- 0x5c
  end loop;
  return sha256(v_outer || sha256(v_inner || p_message));
end;
$$;

-- Equality whose time does not depend on where two equal-length strings differ.
create or replace function conveyor.constant_time_equals(p_a text, p_b text)
returns boolean
language plpgsql
immutable
set search_path = ''
as $$
declare
  v_a bytea := pg_catalog.convert_to(coalesce(p_a, ''), 'UTF8');
  v_b bytea := pg_catalog.convert_to(coalesce(p_b, ''), 'UTF8');
  v_diff integer := 0;
begin
  if length(v_a) <> length(v_b) then
    return false;
  end if;
  for i in 0..length(v_a) - 1 loop
    v_diff := v_diff | (pg_catalog.get_byte(v_a, i) # pg_catalog.get_byte(v_b, i));
  end loop;
  return v_diff = 0;
end;
$$;

-- 43 url-safe characters from 256 random bits (gen_random_uuid is cryptographically random).
create or replace function conveyor.random_token()
returns text
language sql
volatile
set search_path = ''
as $$
  select pg_catalog.rtrim(pg_catalog.translate(pg_catalog.encode(
    pg_catalog.uuid_send(gen_random_uuid()) || pg_catalog.uuid_send(gen_random_uuid()), 'base64'),
    '+/', '-_'), '=');
$$;

-- Create or update a workflow's endpoint from its trigger document ({"webhook": {"methods":
-- ["POST"], "ip_allowlist": ["203.0.113.0/24"], "max_body_bytes": 65536, "tolerance": "5m"}},
-- or null to remove it). Path and secret are generated once and kept. Called by publish.
create or replace function conveyor.sync_webhook(p_workflow_id bigint, p_webhook jsonb)
returns void
language plpgsql
set search_path = ''
as $$
begin
  if p_webhook is null then
    delete from conveyor.webhook_endpoints where workflow_id = p_workflow_id;
    return;
  end if;
  insert into conveyor.webhook_endpoints as e (
    tenant_id, workflow_id, path_token, secret, allowed_methods, ip_allowlist, max_body_bytes, tolerance
  )
  select w.tenant_id, w.workflow_id, conveyor.random_token(), conveyor.random_token(),
    case when p_webhook ? 'methods'
      then array(select pg_catalog.upper(m) from jsonb_array_elements_text(p_webhook -> 'methods') as m)
      else '{POST}' end,
    array(select c::cidr from jsonb_array_elements_text(coalesce(p_webhook -> 'ip_allowlist', '[]')) as c),
    coalesce((p_webhook ->> 'max_body_bytes')::integer, 1048576),
    coalesce(conveyor.parse_duration(p_webhook ->> 'tolerance'), interval '5 minutes')
  from conveyor.workflows as w
  where w.workflow_id = p_workflow_id
  on conflict (workflow_id) do update
    set allowed_methods = excluded.allowed_methods,
      ip_allowlist = excluded.ip_allowlist, max_body_bytes = excluded.max_body_bytes,
      tolerance = excluded.tolerance;
end;
$$;

-- A workflow's endpoint path and secret, for its owner (the only place the secret shows).
create or replace function conveyor.webhook_endpoint(p_tenant_id text, p_slug text)
returns table (path text, secret text, allowed_methods text[], call_count bigint, last_called_at timestamptz)
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform conveyor.require_tenant(p_tenant_id);
  return query
  select '/hooks/' || e.path_token, e.secret, e.allowed_methods, e.call_count, e.last_called_at
  from conveyor.webhook_endpoints as e
  join conveyor.workflows as w on w.workflow_id = e.workflow_id
  where w.tenant_id = p_tenant_id and w.slug = p_slug;
  if not found then
    raise exception using errcode = '22023',
      message = format('workflow "%s" of tenant "%s" has no webhook trigger', p_slug, p_tenant_id);
  end if;
end;
$$;

-- Replace an endpoint's secret (senders must switch to the returned one).
create or replace function conveyor.rotate_webhook_secret(p_tenant_id text, p_slug text)
returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_secret text := conveyor.random_token();
begin
  perform conveyor.require_tenant(p_tenant_id);
  update conveyor.webhook_endpoints as e set secret = v_secret
  from conveyor.workflows as w
  where w.workflow_id = e.workflow_id and w.tenant_id = p_tenant_id and w.slug = p_slug;
  if not found then
    raise exception using errcode = '22023',
      message = format('workflow "%s" of tenant "%s" has no webhook trigger', p_slug, p_tenant_id);
  end if;
  return v_secret;
end;
$$;

-- One inbound request. p_headers: lower-case names → values. Returns what to answer.
drop function if exists conveyor.receive_webhook(text, text, jsonb, bytea, inet, timestamptz);
create or replace function conveyor.receive_webhook(
  p_path_token text,
  p_method text,
  p_headers jsonb,
  p_body bytea,
  p_source inet,
  p_now timestamptz default now()
) returns table (status integer, body jsonb)
language plpgsql
set search_path = ''
as $$
declare
  e conveyor.webhook_endpoints;
  v_signature text := p_headers ->> 'x-conveyor-signature';
  v_delivery text := p_headers ->> 'x-conveyor-delivery';
  v_timestamp text;
  v_given text;
  v_expected text;
  v_text text;
  v_payload jsonb;
  v_execution_id bigint;
  v_status integer;
  v_answer jsonb;
  v_workflow_active boolean;
  v_refusal text;
begin
  select * into e from conveyor.webhook_endpoints as we where we.path_token = p_path_token for update;
  if not found or not e.active then
    return query select 404, jsonb_build_object('error', 'no such endpoint');
    return;
  end if;

  v_timestamp := substring(v_signature from '(?:^|,)\s*t=([0-9]+)');
  v_given := pg_catalog.lower(substring(v_signature from '(?:^|,)\s*v1=([0-9a-fA-F]{64})'));

  if not (pg_catalog.upper(p_method) = any(e.allowed_methods)) then
    v_status := 405;
    v_answer := jsonb_build_object('error', format('method %s is not allowed; use %s',
      pg_catalog.upper(p_method), pg_catalog.array_to_string(e.allowed_methods, ', ')));
  elsif pg_catalog.cardinality(e.ip_allowlist) > 0
    and not exists (select from pg_catalog.unnest(e.ip_allowlist) as n where p_source <<= n) then
    v_status := 403;
    v_answer := jsonb_build_object('error', format('source address %s is not allowed', pg_catalog.host(p_source)));
  elsif length(coalesce(p_body, '\x'::bytea)) > e.max_body_bytes then
    v_status := 413;
    v_answer := jsonb_build_object('error', format('body is larger than %s bytes', e.max_body_bytes));
  elsif v_timestamp is null or v_given is null then
    v_status := 401;
    v_answer := jsonb_build_object('error', 'missing or malformed X-Conveyor-Signature (expected t=<unix>,v1=<hex>)');
  elsif pg_catalog.abs(extract(epoch from p_now) - v_timestamp::numeric)
    > extract(epoch from e.tolerance) then
    v_status := 401;
    v_answer := jsonb_build_object('error', 'signature timestamp is outside the allowed tolerance');
  else
    v_expected := pg_catalog.encode(conveyor.hmac_sha256(
      pg_catalog.convert_to(e.secret, 'UTF8'),
      pg_catalog.convert_to(v_timestamp || '.', 'UTF8') || coalesce(p_body, '\x'::bytea)), 'hex');
    if not conveyor.constant_time_equals(v_given, v_expected) then
      v_status := 401;
      v_answer := jsonb_build_object('error', 'signature does not match');
    end if;
  end if;

  if v_status is null and v_delivery is not null then
    select d.execution_id into v_execution_id from conveyor.webhook_deliveries as d
    where d.endpoint_id = e.endpoint_id and d.delivery_id = v_delivery;
    if found then
      v_status := 200;
      v_answer := jsonb_build_object('status', 'duplicate', 'delivery_id', v_delivery, 'execution_id', v_execution_id);
    end if;
  end if;

  -- The same signed request again under a new or no delivery id: a replay.
  if v_status is null and exists (
    select from conveyor.webhook_signatures as s
    where s.endpoint_id = e.endpoint_id and s.signature = pg_catalog.decode(v_given, 'hex')
  ) then
    v_status := 409;
    v_answer := jsonb_build_object('error', 'this signature was already used (a replayed request); '
      || 'sign each new delivery anew, and send a redelivery with its original X-Conveyor-Delivery id');
  end if;

  if v_status is null then
    select w.active into v_workflow_active from conveyor.workflows as w where w.workflow_id = e.workflow_id;
    if not v_workflow_active then
      v_status := 409;
      v_answer := jsonb_build_object('error', 'the workflow is not active');
    end if;
  end if;

  if v_status is null then
    begin
      v_text := pg_catalog.convert_from(coalesce(p_body, '\x'::bytea), 'UTF8');
    exception when character_not_in_repertoire then
      v_status := 400;
      v_answer := jsonb_build_object('error', 'body is not valid UTF-8 text or contains a NUL byte');
    end;
  end if;

  if v_status is null then
    begin
      v_payload := v_text::jsonb;
    exception when data_exception or program_limit_exceeded then
      if coalesce(p_headers ->> 'content-type', '') like '%json%' then
        v_status := 400;
        v_answer := jsonb_build_object('error', 'body is not valid JSON: ' || sqlerrm);
      else
        v_payload := pg_catalog.to_jsonb(v_text);
      end if;
    end;
  end if;

  -- the plan's executions per month spent: refused, not recorded (a delivery sent again
  -- once the tenant has room is taken)
  if v_status is null then
    v_refusal := conveyor.execution_quota_refusal(e.tenant_id);
    if v_refusal is not null then
      v_status := 429;
      v_answer := jsonb_build_object('error', v_refusal);
      insert into conveyor.execution_logs (tenant_id, workflow_id, level, message, details)
      values (e.tenant_id, e.workflow_id, 'warning', 'webhook delivery started no execution: ' || v_refusal,
        jsonb_build_object('reason', 'executions_per_month', 'delivery_id', v_delivery));
    end if;
  end if;

  if v_status is null then
    v_execution_id := conveyor.start_workflow(e.workflow_id, jsonb_build_object(
      'kind', 'webhook', 'occurred_at', p_now, 'depth', 0,
      'payload', jsonb_build_object(
        'body', v_payload,
        'method', pg_catalog.upper(p_method),
        'source', pg_catalog.host(p_source),
        'delivery_id', v_delivery,
        -- Headers that carry secrets never reach the workflow.
        'headers', p_headers - array['x-conveyor-signature', 'authorization', 'cookie', 'proxy-authorization']
      )));
    if v_delivery is not null then
      insert into conveyor.webhook_deliveries (endpoint_id, delivery_id, tenant_id, execution_id)
      values (e.endpoint_id, v_delivery, e.tenant_id, v_execution_id);
    end if;
    -- Remembered until its timestamp leaves the tolerance, when the clock check refuses it.
    delete from conveyor.webhook_signatures as s
    where s.endpoint_id = e.endpoint_id and s.signed_at < p_now - e.tolerance;
    insert into conveyor.webhook_signatures (endpoint_id, signature, signed_at)
    values (e.endpoint_id, pg_catalog.decode(v_given, 'hex'), pg_catalog.to_timestamp(v_timestamp::double precision));
    v_status := 202;
    v_answer := jsonb_build_object('status', 'accepted', 'execution_id', v_execution_id);
  end if;

  update conveyor.webhook_endpoints
  set call_count = call_count + 1,
    accepted_count = accepted_count + (v_status = 202)::integer,
    last_called_at = p_now,
    last_status = v_status
  where endpoint_id = e.endpoint_id;
  return query select v_status, v_answer;
end;
$$;

-- A new API key for a tenant; the key itself is returned once and stored only as a hash.
create or replace function conveyor.create_api_key(p_tenant_id text, p_name text)
returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_key text := 'cvk_' || conveyor.random_token();
begin
  perform conveyor.require_tenant(p_tenant_id);
  insert into conveyor.api_keys (tenant_id, name, key_hash)
  values (p_tenant_id, p_name, sha256(pg_catalog.convert_to(v_key, 'UTF8')));
  return v_key;
exception when unique_violation then
  raise exception using errcode = '22023',
    message = format('tenant "%s" already has an API key named "%s"', p_tenant_id, p_name);
end;
$$;

create or replace function conveyor.revoke_api_key(p_tenant_id text, p_name text)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform conveyor.require_tenant(p_tenant_id);
  update conveyor.api_keys set revoked_at = now()
  where tenant_id = p_tenant_id and name = p_name and revoked_at is null;
  return found;
end;
$$;

-- The HTTP API's manual run: POST /api/workflows/<slug>/runs with a bearer API key.
drop function if exists conveyor.http_trigger(text, text, jsonb);
create or replace function conveyor.http_trigger(p_api_key text, p_slug text, p_data jsonb)
returns table (status integer, body jsonb)
language plpgsql
set search_path = ''
as $$
declare
  v_tenant_id text;
  v_execution_id bigint;
begin
  update conveyor.api_keys as k set last_used_at = now()
  where k.key_hash = sha256(pg_catalog.convert_to(coalesce(p_api_key, ''), 'UTF8')) and k.revoked_at is null
  returning k.tenant_id into v_tenant_id;
  if v_tenant_id is null then
    return query select 401, jsonb_build_object('error', 'missing, unknown or revoked API key');
    return;
  end if;
  begin
    v_execution_id := conveyor.trigger_workflow(v_tenant_id, p_slug, coalesce(p_data, '{}'));
  exception when invalid_parameter_value then
    return query select case when sqlerrm like '%does not exist%' then 404 else 422 end,
      jsonb_build_object('error', sqlerrm);
    return;
  end;
  return query select 202, jsonb_build_object('status', 'accepted', 'execution_id', v_execution_id);
end;
$$;
