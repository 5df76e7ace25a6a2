-- Retrying a finished execution starts a new one that remembers where it came from.
alter table conveyor.executions
add column retry_of bigint references conveyor.executions (execution_id) on delete set null;

create index executions_retry_of_idx on conveyor.executions (retry_of) where retry_of is not null;
