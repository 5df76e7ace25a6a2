-- The capture log: where watched tables' changed rows wait to become events.
--
-- Capturing used to turn every changed row into a conveyor.events row inside the
-- platform's statement: a JSON conversion, a tenant lookup and an event row with four
-- index entries per platform row, which made a 10,000-row insert 3.7x slower than on an
-- unwatched table (bench/capture_overhead.py). Now the statement trigger copies the
-- transition rows as they are into a per-table log table with no index, and dispatch
-- turns them into events (conveyor.ingest_captures) in its own transaction, off the
-- platform's write path. The log tables are created by conveyor.watch: one per watched
-- table, named conveyor_capture.t<table oid>, with the table's columns and three of its
-- own (_conveyor_statement, _conveyor_op, _conveyor_at).
create schema conveyor_capture;
revoke all on schema conveyor_capture from public;

-- Numbers each captured statement: old and new rows of one update are paired within
-- their statement, and the log is turned into events in statement order.
create sequence conveyor.capture_statements;
