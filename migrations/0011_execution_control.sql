-- Operator control of executions:
-- * retry_of: retrying a finished execution starts a new one that remembers where it came from;
-- * paused_at: a paused execution takes no further step until it is resumed (an action
--   already queued is still performed and its result recorded; timeouts still apply).
alter table conveyor.executions
add column retry_of bigint references conveyor.executions (execution_id) on delete set null,
add column paused_at timestamptz;

create index executions_retry_of_idx on conveyor.executions (retry_of) where retry_of is not null;
