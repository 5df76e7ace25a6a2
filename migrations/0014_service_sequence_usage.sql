-- Dispatch numbers new executions itself (nextval on the identity's sequence) before it
-- runs their first steps and inserts them once (sql/dispatch.sql); runners call dispatch
-- as conveyor_service, which therefore needs the sequence.
grant usage on sequence conveyor.executions_execution_id_seq to conveyor_service;
