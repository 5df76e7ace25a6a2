-- The due-scan's own index: exactly the executions conveyor.resume_due can resume (waiting
-- on a delay or on an event's timeout, not paused), in the order it takes them. Finding
-- what is due, and when the next one will be, is one probe at the start of the index
-- however many executions wait; a large due backlog is taken 1,000 at a time in order
-- without sorting it first. It replaces executions_due_idx (resume_at only, which also
-- held paused executions and left the (resume_at, execution_id) order to a sort).
create index executions_due_scan_idx on conveyor.executions (resume_at, execution_id)
where status = 'waiting' and wait_kind in ('delay', 'event') and paused_at is null;

drop index conveyor.executions_due_idx;
