-- Foreign keys off the dispatch and interpretation hot path.
--
-- Every execution writes one executions row and a step_runs row per step, and each
-- foreign key on them costs an index probe plus a row lock on the referenced row, checked
-- row by row. Measured with bench/dispatch_throughput.py (10,000 executions of three
-- internal steps): these four keys took about a quarter of the time. Their writers are
-- Conveyor's own functions, which keep the references right without them:
--   * step_runs rows are written by the interpreter and the write-back for an execution
--     they hold, with that execution's tenant; retention (conveyor.prune_history) deletes
--     an execution's step runs in the same statement as the execution;
--   * executions get their tenant from the event or the manual start that created them,
--     both of which checked the tenant;
--   * executions.event_id names the event that started the execution; retention may
--     remove that event later (the execution keeps its own copy of it as `trigger`).
-- The keys that guard operator-facing consistency stay: the pinned workflow version,
-- execution_logs, and the firing tables' references.
alter table conveyor.step_runs
drop constraint step_runs_execution_id_fkey,
drop constraint step_runs_tenant_id_fkey;

alter table conveyor.executions
drop constraint executions_event_id_fkey,
drop constraint executions_tenant_id_fkey;
