-- Send slots at scale (docs/campaigns.md#send-window-and-send-rate, sql/campaign_send_slots.sql):
-- a cursor per tenant, key, rate and window, so a reservation starts at the first minute
-- that may have room instead of trying every full minute from the window's opening.

-- Every minute in [from_minute, next_minute) that lies inside the window (scope: the
-- window's JSON with its zone, '' for none) had per_minute sends reserved when the cursor
-- was written; a returned slot moves next_minute back to its minute.
create table conveyor.campaign_send_cursors (
  tenant_id text not null references conveyor.tenants (tenant_id),
  key text not null,
  per_minute integer not null,
  scope text not null,
  from_minute timestamptz not null,
  next_minute timestamptz not null,
  primary key (tenant_id, key, per_minute, scope),
  check (next_minute >= from_minute)
);

alter table conveyor.campaign_send_cursors enable row level security;
alter table conveyor.campaign_send_cursors force row level security;
create policy campaign_send_cursors_isolation on conveyor.campaign_send_cursors
using (tenant_id = (select conveyor.current_tenant()));

grant select on conveyor.campaign_send_cursors to conveyor_app;
grant select, insert, update, delete on conveyor.campaign_send_cursors to conveyor_service;
