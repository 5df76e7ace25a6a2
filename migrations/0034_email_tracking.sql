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

do $$
declare
  v_table text;
begin
  foreach v_table in array array['email_messages', 'email_events', 'email_suppressions'] loop
    execute format('alter table conveyor.%I enable row level security', v_table);
    execute format('alter table conveyor.%I force row level security', v_table);
    execute format(
      'create policy %I on conveyor.%I using (tenant_id = (select conveyor.current_tenant()))',
      v_table || '_isolation', v_table
    );
    execute format('grant select on conveyor.%I to conveyor_app', v_table);
    execute format('grant select, insert, update, delete on conveyor.%I to conveyor_service', v_table);
  end loop;
end;
$$;
