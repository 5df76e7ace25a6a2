-- Step runs updated in place. An action's step run is written again within milliseconds
-- of its insert: its result (write_back), and for a retry its new message id
-- (send_actions); a delay's or a wait's when it ends. With full pages each such update
-- moved the row to another page and, because step_runs_msg_idx's predicate names
-- `status` and its key is `msg_id`, wrote a new entry into every index of the table
-- (measured with pg_walinspect over a burst of 5,000 three-step workflows: 17 step_runs
-- index entries and 3 row-lock records per workflow). Room left on each page and no
-- index over the columns these updates change make them heap-only (HOT): no index
-- entries. Fill factor 60: at 70, 17 of 100 results of a set → action → set workflow
-- still found their page full (tests/sql/test_write_back.py); the price is up to 40%
-- more heap pages for step runs that are never updated.
--
-- step_runs_msg_idx listed the queued step runs for conveyor.recover_stalled_actions, once
-- a minute; that safety net now starts from the executions waiting for an action, which
-- are written anyway when they start and end waiting (their status changes, so those
-- updates are never heap-only).
alter table conveyor.step_runs set (fillfactor = 60);

create index executions_waiting_action_idx on conveyor.executions (execution_id)
where status = 'waiting' and wait_kind = 'action';

drop index conveyor.step_runs_msg_idx;
