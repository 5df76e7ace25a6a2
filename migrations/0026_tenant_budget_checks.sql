-- Dispatch reads a tenant's whole event rate (every shard) and its active executions only
-- now and then (conveyor.count_tenant_events): when the last such check found the tenant
-- near a budget, at the first batch of a minute, and each time its count on this shard
-- crosses a step. The result of the last check is kept with the shard's counter.
alter table conveyor.tenant_event_rates add column near_budget boolean not null default false;
