-- Email delivery tracking (docs/email-tracking.md, sql/email_tracking.sql): one row per
-- message a successful email.send step sent (written in the step's write-back), the
-- provider events recorded against it (conveyor.record_email_event), and the addresses a
-- tenant may no longer mail from list_unsubscribe steps (unsubscribed, hard-bounced,
-- complained).

-- One row per message (an email.send step sends one message to all its recipients;
-- to_address is the first accepted recipient). Updated only by conveyor.record_email_event,
-- so AFTER INSERT/UPDATE triggers (campaign counters) see every change.
create table conveyor.email_messages (
  id bigint generated always as identity primary key,
  tenant_id text not null references conveyor.tenants (tenant_id),
  execution_id bigint,
  step_key text,
  connection_slug text,
  to_address text not null,
  subject text,
  -- the RFC 5322 Message-ID the email action generated, with its angle brackets
  message_id text not null,
  provider_message_id text,
  tags jsonb not null default '{}',
  status text not null default 'sent' check (status in ('sent', 'delivered', 'bounced', 'complained', 'failed')),
  opened_count integer not null default 0,
  first_opened_at timestamptz,
  clicked_count integer not null default 0,
  first_clicked_at timestamptz,
  replied_at timestamptz,
  unsubscribed_at timestamptz,
  bounce_reason text,
  -- the random token of the message's one-click unsubscribe URL (/u/<token>), when it has one
  unsubscribe_token text unique check (length(unsubscribe_token) >= 32),
  sent_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, message_id)
);
create index email_messages_provider_idx on conveyor.email_messages (tenant_id, provider_message_id)
where provider_message_id is not null;

-- The provider events recorded, by their provider's event id: a redelivery changes nothing.
create table conveyor.email_events (
  tenant_id text not null references conveyor.tenants (tenant_id),
  event_key text not null,
  email_message_id bigint not null references conveyor.email_messages (id) on delete cascade,
  kind text not null,
  occurred_at timestamptz not null,
  recorded_at timestamptz not null default now(),
  primary key (tenant_id, event_key)
);
create index email_events_message_idx on conveyor.email_events (email_message_id);

-- Addresses (lower-cased) list_unsubscribe steps no longer mail.
create table conveyor.email_suppressions (
  tenant_id text not null references conveyor.tenants (tenant_id),
  address text not null,
  reason text not null check (reason in ('unsubscribed', 'bounced', 'complained', 'manual')),
  email_message_id bigint references conveyor.email_messages (id) on delete set null,
  created_at timestamptz not null default now(),
  primary key (tenant_id, address)
);

-- A tenant's email provider webhook (one per tenant and provider): the unguessable path
-- `conveyor serve` takes it at (/email/hooks/<path_token>) and the provider's signing
-- secret (svix: whsec_<base64>; mailgun: the HTTP webhook signing key), readable only by
-- the service role. Like conveyor.webhook_endpoints, which belong to one workflow each.
create table conveyor.email_webhooks (
  tenant_id text not null references conveyor.tenants (tenant_id),
  provider text not null check (provider in ('svix', 'mailgun')),
  path_token text not null unique check (length(path_token) >= 32),
  secret text not null check (length(secret) >= 16),
  tolerance interval not null default interval '5 minutes',
  call_count bigint not null default 0,
  last_called_at timestamptz,
  last_status integer,
  created_at timestamptz not null default now(),
  primary key (tenant_id, provider)
);

do $$
declare
  v_table text;
begin
  foreach v_table in array array['email_messages', 'email_events', 'email_suppressions', 'email_webhooks'] loop
    execute format('alter table conveyor.%I enable row level security', v_table);
    execute format('alter table conveyor.%I force row level security', v_table);
    execute format(
      'create policy %I on conveyor.%I using (tenant_id = (select conveyor.current_tenant()))',
      v_table || '_isolation', v_table
    );
    if v_table <> 'email_webhooks' then
      execute format('grant select on conveyor.%I to conveyor_app', v_table);
    end if;
    execute format('grant select, insert, update, delete on conveyor.%I to conveyor_service', v_table);
  end loop;
end;
$$;
-- the secret stays with the service role
grant select (tenant_id, provider, path_token, tolerance, call_count, last_called_at, last_status, created_at)
on conveyor.email_webhooks to conveyor_app;

-- Signatures an email webhook accepted, while their timestamp is within the tolerance: a
-- request that reuses one is a replay (Mailgun signs its timestamp and token only, not
-- the body). Like conveyor.webhook_signatures.
create table conveyor.email_webhook_signatures (
  path_token text not null references conveyor.email_webhooks (path_token) on delete cascade,
  signature bytea not null,
  signed_at timestamptz not null,
  primary key (path_token, signature)
);
create index email_webhook_signatures_signed_idx on conveyor.email_webhook_signatures (path_token, signed_at);
revoke all on conveyor.email_webhook_signatures from public;
grant select, insert, delete on conveyor.email_webhook_signatures to conveyor_service;
