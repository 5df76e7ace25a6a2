-- Signatures of accepted inbound webhooks, kept while their timestamp is within the
-- endpoint's tolerance: the signed string ("<t>.<raw body>") does not cover
-- X-Conveyor-Delivery, so a captured request replayed with a new or no delivery id would
-- otherwise run again. conveyor.receive_webhook refuses a signature it finds here and
-- deletes an endpoint's expired rows as it accepts new ones.
--
-- No tenant_id and no grant to conveyor_app: HMAC digests are not tenant data anyone reads.
create table conveyor.webhook_signatures (
  endpoint_id bigint not null references conveyor.webhook_endpoints (endpoint_id) on delete cascade,
  -- The v1 HMAC-SHA256 digest (32 bytes).
  signature bytea not null,
  -- The signature's t=, from which the tolerance is counted.
  signed_at timestamptz not null,
  primary key (endpoint_id, signature)
);

create index webhook_signatures_signed_idx on conveyor.webhook_signatures (endpoint_id, signed_at);

revoke all on conveyor.webhook_signatures from public;
grant select, insert, delete on conveyor.webhook_signatures to conveyor_service;
