-- The enroll step kind (sql/steps/enroll.sql): a workflow enrolling a row in a campaign.
alter table conveyor.workflow_steps drop constraint workflow_steps_kind_check;
alter table conveyor.workflow_steps add constraint workflow_steps_kind_check
check (kind in (
  'action', 'condition', 'switch', 'set_variable', 'transform', 'stop', 'emit', 'data', 'delay', 'wait_for_event',
  'wait_until', 'split', 'parallel', 'for_each', 'call', 'notify', 'approval', 'campaign', 'enroll'
));
