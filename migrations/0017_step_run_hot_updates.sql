-- Step runs updated in place. An action's step run is written three times within
-- milliseconds: inserted 'queued' (the interpreter), its message id recorded
-- (send_actions), its result applied (write_back). With full pages each update moved the
-- row to another page and, because step_runs_msg_idx's predicate names `status` and its
-- key is `msg_id`, wrote a new entry into every index of the table (measured with
-- pg_walinspect over a burst of 5,000 three-step workflows: 17 step_runs index entries
-- and 3 row-lock records per workflow). Room left on each page and no index over the
-- columns these updates change make both updates heap-only (HOT): no index entries.
--
-- step_runs_msg_idx listed the queued step runs for conveyor.recover_stalled_actions, once
-- a minute; that safety net now starts from the executions waiting for an action, which
-- are written anyway when they start and end waiting (their status changes, so those
-- updates are never heap-only).
alter table conveyor.step_runs set (fillfactor = 70);

create index executions_waiting_action_idx on conveyor.executions (execution_id)
where status = 'waiting' and wait_kind = 'action';

drop index conveyor.step_runs_msg_idx;
