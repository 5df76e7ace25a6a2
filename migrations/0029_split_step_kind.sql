-- The step kind split (sql/steps/split.sql): weighted branches, one chosen per execution.
alter table conveyor.workflow_steps drop constraint workflow_steps_kind_check;
alter table conveyor.workflow_steps add constraint workflow_steps_kind_check check (kind in (
  'action', 'condition', 'switch', 'set_variable', 'transform', 'stop', 'emit', 'data', 'delay',
  'wait_for_event', 'wait_until', 'split'
));
