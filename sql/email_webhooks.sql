-- Email providers' event webhooks (docs/email-tracking.md): `conveyor serve` forwards
-- POST /email/hooks/<path token> here, which checks the provider's signature and records
-- the event against its message (conveyor.record_email_event).
--
--   svix (Resend, and others that sign with Svix): headers svix-id, svix-timestamp,
--     svix-signature: v1,<base64 HMAC-SHA256(base64-decoded secret after whsec_,
--     "<id>.<timestamp>.<body>")> (several, space-separated); body {"type": "email.delivered",
--     "created_at", "data": {"email_id", ...}}.
--   mailgun: body {"signature": {"timestamp", "token", "signature": <hex HMAC-SHA256(signing
--     key, timestamp || token)>}, "event-data": {"id", "event", "timestamp", "severity",
--     "message": {"headers": {"message-id"}}, ...}}.
--
-- A signature older or newer than the endpoint's tolerance (5 minutes) is refused (401);
-- a reused one is a replay (409: Mailgun signs no body); a redelivered event (same svix-id,
-- same Mailgun event id) is acknowledged and recorded once (record_email_event).

-- Sets the tenant's webhook for p_provider (svix | mailgun) with the provider's signing
-- secret; returns its path (the path token is made once and kept).
create or replace function conveyor.set_email_webhook(p_tenant_id text, p_provider text, p_secret text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_token text;
begin
  perform conveyor.require_tenant(p_tenant_id);
  if p_provider is null or p_provider not in ('svix', 'mailgun') then
    raise exception using
      errcode = '22023', message = format('set_email_webhook: unknown provider %L (expected svix or mailgun)', p_provider);
  end if;
  if p_provider = 'svix' and (p_secret is null or p_secret !~ '^whsec_[A-Za-z0-9+/]{16,}={0,2}$') then
    raise exception using
      errcode = '22023', message = 'set_email_webhook: a svix secret is whsec_<base64>, as the provider shows it';
  end if;
  if p_provider = 'mailgun' and (p_secret is null or length(p_secret) < 16) then
    raise exception using
      errcode = '22023', message = 'set_email_webhook: the mailgun signing key must have at least 16 characters';
  end if;
  insert into conveyor.email_webhooks as w (tenant_id, provider, path_token, secret)
  values (p_tenant_id, p_provider, conveyor.random_token(), p_secret)
  on conflict (tenant_id, provider) do update set secret = excluded.secret
  returning w.path_token into v_token;
  return jsonb_build_object('provider', p_provider, 'path', '/email/hooks/' || v_token);
end;
$$;

-- The record_email_event call of one provider event: {kind, ref, occurred_at, details}, or
-- null for an event type that is not tracked (email.sent, a temporary failure, ...).
create or replace function conveyor.email_webhook_event(p_provider text, p_body jsonb, p_event_id text)
returns jsonb
language plpgsql
immutable
set search_path = ''
as $$
declare
  v_data jsonb;
  v_kind text;
  v_header text;
begin
  if p_provider = 'svix' then
    v_data := p_body -> 'data';
    v_kind := case p_body ->> 'type'
      when 'email.delivered' then 'delivered'
      when 'email.opened' then 'opened'
      when 'email.clicked' then 'clicked'
      when 'email.bounced' then 'bounced'
      when 'email.complained' then 'complained'
    end;
    if v_kind is null or jsonb_typeof(v_data) <> 'object' or v_data ->> 'email_id' is null then
      return null;
    end if;
    -- the Message-ID, when the provider reports the message's headers
    select h.value ->> 'value' into v_header
    from jsonb_array_elements(case jsonb_typeof(v_data -> 'headers') when 'array' then v_data -> 'headers' end) as h (value)
    where lower(h.value ->> 'name') = 'message-id'
    limit 1;
    return jsonb_build_object(
      'kind', v_kind, 'ref', v_data ->> 'email_id',
      'occurred_at', coalesce(v_data ->> 'created_at', p_body ->> 'created_at'),
      'details', jsonb_strip_nulls(jsonb_build_object(
        'event_id', p_event_id, 'provider', 'svix', 'provider_message_id', v_data ->> 'email_id',
        'message_id', coalesce(v_header, v_data ->> 'message_id'),
        'url', v_data #>> '{click,link}',
        'reason', v_data #>> '{bounce,message}',
        'bounce_type', case when v_data #>> '{bounce,type}' ilike 'transient%' then 'soft' end
      ))
    );
  end if;
  v_data := p_body -> 'event-data';
  if jsonb_typeof(v_data) <> 'object' then
    return null;
  end if;
  v_kind := case v_data ->> 'event'
    when 'delivered' then 'delivered'
    when 'opened' then 'opened'
    when 'clicked' then 'clicked'
    when 'complained' then 'complained'
    when 'unsubscribed' then 'unsubscribed'
    -- a temporary failure is retried by the provider: not a bounce yet
    when 'failed' then case when v_data ->> 'severity' = 'permanent' then 'bounced' end
  end;
  v_header := v_data #>> '{message,headers,message-id}';
  if v_kind is null or v_header is null then
    return null;
  end if;
  return jsonb_build_object(
    'kind', v_kind, 'ref', v_header,
    'occurred_at', case
      when jsonb_typeof(v_data -> 'timestamp') = 'number' then pg_catalog.to_timestamp((v_data ->> 'timestamp')::double precision)
    end,
    'details', jsonb_strip_nulls(jsonb_build_object(
      'event_id', coalesce(v_data ->> 'id', p_event_id), 'provider', 'mailgun', 'url', v_data ->> 'url',
      'reason', coalesce(v_data #>> '{delivery-status,description}', v_data #>> '{delivery-status,message}',
        v_data ->> 'reason')
    ))
  );
end;
$$;

-- A Mailgun signature (hex HMAC-SHA256 of timestamp || token with the signing key): the
-- signature when it matches, null when it does not, empty when the fields are malformed.
create or replace function conveyor.mailgun_signature(p_key text, p_timestamp text, p_token text, p_signature text)
returns bytea
language plpgsql
immutable
set search_path = ''
as $$
declare
  v_expected bytea;
begin
  if p_timestamp !~ '^[0-9]{1,12}$' or p_token is null or p_signature !~ '^[0-9a-fA-F]{64}$' then
    return '\x'::bytea;
  end if;
  v_expected := conveyor.hmac_sha256(pg_catalog.convert_to(p_key, 'UTF8'), pg_catalog.convert_to(p_timestamp || p_token, 'UTF8'));
  if conveyor.constant_time_equals(lower(p_signature), pg_catalog.encode(v_expected, 'hex')) then
    return v_expected;
  end if;
  return null;
end;
$$;

-- A verified signature's freshness: within the endpoint's tolerance and not used before
-- (recorded now). Null when it passes; else the answer (401 stale, 409 a replay; a svix
-- redelivery, which signs the body with its delivery id, is 200 duplicate).
create or replace function conveyor.email_webhook_fresh(
  w conveyor.email_webhooks, p_signature bytea, p_timestamp text, p_now timestamptz
) returns table (status integer, body jsonb)
language plpgsql
set search_path = ''
as $$
begin
  if p_signature is null then
    return query select 401, jsonb_build_object('error', 'signature does not match');
    return;
  end if;
  if pg_catalog.abs(extract(epoch from p_now) - p_timestamp::numeric) > extract(epoch from w.tolerance) then
    return query select 401, jsonb_build_object('error', 'signature timestamp is outside the allowed tolerance');
    return;
  end if;
  delete from conveyor.email_webhook_signatures as s where s.path_token = w.path_token and s.signed_at < p_now - w.tolerance;
  insert into conveyor.email_webhook_signatures (path_token, signature, signed_at)
  values (w.path_token, p_signature, pg_catalog.to_timestamp(p_timestamp::double precision))
  on conflict do nothing;
  if not found then
    if w.provider = 'svix' then
      return query select 200, jsonb_build_object('status', 'duplicate');
    else
      return query select 409, jsonb_build_object('error', 'this signature was already used (a replayed request)');
    end if;
  end if;
end;
$$;

-- One provider webhook request: its status and answer. p_headers lower-cased names.
create or replace function conveyor.receive_email_webhook(
  p_path_token text, p_headers jsonb, p_body bytea, p_now timestamptz default now()
) returns table (status integer, body jsonb)
language plpgsql
set search_path = ''
as $$
declare
  w conveyor.email_webhooks;
  v_body jsonb;
  v_timestamp text;
  v_id text;
  v_expected bytea;
  v_given bytea;
  v_event jsonb;
  v_result jsonb;
  v_at timestamptz;
  v_status integer;
  v_answer jsonb;
begin
  select * into w from conveyor.email_webhooks as x where x.path_token = p_path_token;
  if not found then
    return query select 404, jsonb_build_object('error', 'no such endpoint');
    return;
  end if;
  update conveyor.email_webhooks as x set call_count = x.call_count + 1, last_called_at = p_now
  where x.path_token = p_path_token;
  if length(coalesce(p_body, '\x'::bytea)) > 1048576 then
    return query select 413, jsonb_build_object('error', 'body is larger than 1048576 bytes');
    return;
  end if;
  begin
    v_body := pg_catalog.convert_from(coalesce(p_body, '\x'::bytea), 'UTF8')::jsonb;
  exception when data_exception or program_limit_exceeded or character_not_in_repertoire then
    v_body := null;
  end;

  if w.provider = 'svix' then
    v_id := p_headers ->> 'svix-id';
    v_timestamp := p_headers ->> 'svix-timestamp';
    if v_id is null or v_timestamp !~ '^[0-9]{1,12}$' or p_headers ->> 'svix-signature' is null then
      return query select 401, jsonb_build_object('error', 'missing svix-id, svix-timestamp or svix-signature');
      return;
    end if;
    v_expected := conveyor.hmac_sha256(
      pg_catalog.decode(substr(w.secret, 7), 'base64'),
      pg_catalog.convert_to(v_id || '.' || v_timestamp || '.', 'UTF8') || coalesce(p_body, '\x'::bytea)
    );
    -- one of the space-separated v1,<base64> signatures must match
    select pg_catalog.decode(s.sig, 'base64') into v_given
    from (
      select substr(p, 4) as sig
      from pg_catalog.regexp_split_to_table(p_headers ->> 'svix-signature', '\s+') as p
      where p ~ '^v1,[A-Za-z0-9+/]{43}=$'
    ) as s
    where conveyor.constant_time_equals(s.sig, pg_catalog.encode(v_expected, 'base64'))
    limit 1;
  else
    v_timestamp := v_body #>> '{signature,timestamp}';
    v_id := v_body #>> '{signature,token}';
    v_given := conveyor.mailgun_signature(w.secret, v_timestamp, v_id, v_body #>> '{signature,signature}');
    if v_given = '\x'::bytea then
      return query select 401, jsonb_build_object('error', 'missing or malformed signature {timestamp, token, signature}');
      return;
    end if;
  end if;

  select f.status, f.body into v_status, v_answer from conveyor.email_webhook_fresh(w, v_given, v_timestamp, p_now) as f;
  if v_status is not null then
    return query select v_status, v_answer;
    return;
  end if;

  if jsonb_typeof(v_body) is distinct from 'object' then
    return query select 400, jsonb_build_object('error', 'body is not a JSON object');
    return;
  end if;
  v_event := conveyor.email_webhook_event(w.provider, v_body, v_id);
  if v_event is null then
    return query select 200, jsonb_build_object('status', 'ignored', 'reason', 'not a tracked event type');
    return;
  end if;
  begin
    v_at := (v_event ->> 'occurred_at')::timestamptz;
  exception when data_exception then
    v_at := null;  -- a time the provider wrote oddly: the time it arrived
  end;
  v_result := conveyor.record_email_event(w.tenant_id, v_event ->> 'ref', v_event ->> 'kind', v_at, v_event -> 'details');
  update conveyor.email_webhooks as x set last_status = case v_result ->> 'outcome' when 'unmatched' then 202 else 200 end
  where x.path_token = p_path_token;
  return query select case v_result ->> 'outcome' when 'unmatched' then 202 else 200 end,
    jsonb_build_object('status', v_result ->> 'outcome', 'kind', v_event ->> 'kind');
end;
$$;

-- A reply from Mailgun's inbound routes (POST /email/inbound/<the mailgun path token>):
-- p_fields the posted form's fields (timestamp, token, signature, In-Reply-To, References,
-- Message-Id, from, subject ...), signed like its event webhooks. Correlated by
-- conveyor.record_email_reply; a reply that names none of our messages is 202 unmatched.
create or replace function conveyor.receive_email_inbound(
  p_path_token text, p_fields jsonb, p_now timestamptz default now()
) returns table (status integer, body jsonb)
language plpgsql
set search_path = ''
as $$
declare
  w conveyor.email_webhooks;
  v_given bytea;
  v_status integer;
  v_answer jsonb;
  v_result jsonb;
begin
  select * into w from conveyor.email_webhooks as x where x.path_token = p_path_token and x.provider = 'mailgun';
  if not found then
    return query select 404, jsonb_build_object('error', 'no such endpoint');
    return;
  end if;
  update conveyor.email_webhooks as x set call_count = x.call_count + 1, last_called_at = p_now
  where x.path_token = p_path_token;
  v_given := conveyor.mailgun_signature(w.secret, p_fields ->> 'timestamp', p_fields ->> 'token',
    p_fields ->> 'signature');
  if v_given = '\x'::bytea then
    return query select 401, jsonb_build_object('error', 'missing or malformed signature fields timestamp, token, signature');
    return;
  end if;
  select f.status, f.body into v_status, v_answer
  from conveyor.email_webhook_fresh(w, v_given, p_fields ->> 'timestamp', p_now) as f;
  if v_status is not null then
    return query select v_status, v_answer;
    return;
  end if;
  v_result := conveyor.record_email_reply(w.tenant_id, left(p_fields ->> 'In-Reply-To', 2000),
    left(p_fields ->> 'References', 20000), jsonb_strip_nulls(jsonb_build_object(
      'event_id', 'inbound:' || left(coalesce(p_fields ->> 'Message-Id', p_fields ->> 'token'), 300),
      'provider', 'mailgun', 'from', left(p_fields ->> 'from', 320), 'subject', left(p_fields ->> 'subject', 1000))));
  update conveyor.email_webhooks as x set last_status = case v_result ->> 'outcome' when 'unmatched' then 202 else 200 end
  where x.path_token = p_path_token;
  return query select case v_result ->> 'outcome' when 'unmatched' then 202 else 200 end,
    jsonb_build_object('status', v_result ->> 'outcome', 'kind', 'replied');
end;
$$;

revoke all on function conveyor.mailgun_signature(text, text, text, text) from public;
revoke all on function conveyor.email_webhook_fresh(conveyor.email_webhooks, bytea, text, timestamptz) from public;
revoke all on function conveyor.receive_email_inbound(text, jsonb, timestamptz) from public;
