-- executions retry refuses a second retry of the same execution (sql/control.sql): finding
-- an earlier retry is an index probe. Partial: only retries carry retry_of.
create index executions_retry_of on conveyor.executions (retry_of) where retry_of is not null;
