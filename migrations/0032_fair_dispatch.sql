-- Fair sharing of dispatch and of the action queue between tenants (docs/queue.md,
-- "Fairness"): both are read tenant by tenant, so each needs its pending rows in
-- (tenant, order) order.

-- Pending events per tenant, oldest first: dispatch claims each tenant's share from here
-- (conveyor.claim_events, sql/dispatch.sql). It replaces the index in plain event order,
-- which nothing else reads: one index per pending event, as before.
create index events_pending_tenant_idx on conveyor.events (tenant_id, event_id) where dispatched_at is null;
drop index conveyor.events_pending_idx;

-- Queued actions per tenant, oldest first: the runners' read takes each tenant's share
-- from here (conveyor.read_actions, sql/actions.sql). Every message names its tenant.
create index q_conveyor_actions_tenant_idx on pgmq.q_conveyor_actions ((coalesce(message ->> 'tenant_id', '')), msg_id);
