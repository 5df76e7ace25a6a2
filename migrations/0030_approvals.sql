-- Approvals (docs/approvals.md): an approval step (sql/steps/approval.sql) parks its
-- execution (wait_kind 'approval') on one conveyor.approval_requests row until the request
-- is decided (sql/approvals.sql) or its due time passes; the due time is the execution's
-- resume_at, read by the existing due scan (conveyor.next_due_at, conveyor.resume_due), so
-- the tick escalates or expires it without a poller of its own. Every decision, delegation,
-- escalation, expiry and cancellation is a row of conveyor.approval_decisions.

create table conveyor.approval_requests (
  tenant_id text not null,
  request_id bigint generated always as identity primary key,
  -- deferred: a new execution's first step may ask for approval before the execution is
  -- inserted (the interpreter writes each new execution once, in the state it reached)
  execution_id bigint not null references conveyor.executions (execution_id) on delete cascade
  deferrable initially deferred,
  workflow_id bigint not null,
  step_id text not null,
  visit integer not null,
  title text not null,
  message text not null default '',
  action_url text,
  -- 'sequence': one slot at a time, in order; 'parallel': every slot at once
  mode text not null check (mode in ('sequence', 'parallel')),
  -- the quorum as written ('all', 'any', 'at_least') and the approvals that reach it
  quorum text not null check (quorum in ('all', 'any', 'at_least')),
  needed integer not null check (needed >= 1),
  -- one element per slot: who holds it now (a delegation hands it on), who handed it to
  -- them (null: nobody), and its vote (null: none yet, 'approve', 'reject')
  approvers text[] not null,
  delegated_from text[] not null,
  votes text[] not null,
  -- who asked; with requester_may_approve false the requester holds no slot and may not
  -- be handed one
  requester text,
  requester_may_approve boolean not null default true,
  -- 'pending' while decisions are taken; 'decided' once its outcome is known but its
  -- execution was locked or paused (the tick moves it on: conveyor.approval_due); 'closed'
  -- once the execution has moved on or ended
  state text not null default 'pending' check (state in ('pending', 'decided', 'closed')),
  outcome text check (outcome in ('approved', 'rejected', 'expired', 'cancelled')),
  due_at timestamptz,
  -- at the due time the request passes to escalate_to (once), with escalation_due to
  -- decide before it expires; without escalate_to it expires at the due time
  escalate_to text,
  escalation_due interval,
  escalated_at timestamptz,
  delegations integer not null default 0,
  created_at timestamptz not null default now(),
  decided_at timestamptz,
  check (needed <= cardinality(approvers)),
  check (cardinality(approvers) = cardinality(delegated_from) and cardinality(approvers) = cardinality(votes)),
  check ((state = 'pending') = (outcome is null))
);

create unique index approval_requests_step_visit_idx on conveyor.approval_requests (execution_id, step_id, visit);
-- a user's requests (conveyor.list_approvals): the slots they hold
create index approval_requests_approvers_idx on conveyor.approval_requests using gin (approvers);
-- decided requests whose execution was locked or paused when they were decided: the tick
-- moves them on (usually empty)
create index approval_requests_decided_idx on conveyor.approval_requests (request_id) where state = 'decided';

create table conveyor.approval_decisions (
  tenant_id text not null,
  decision_id bigint generated always as identity primary key,
  request_id bigint not null references conveyor.approval_requests (request_id) on delete cascade,
  -- who acted: an approver, or null for what the engine did (escalated, expired, cancelled)
  user_id text,
  decision text not null
  check (decision in ('approve', 'reject', 'delegate', 'escalated', 'expired', 'cancelled')),
  -- the approver's note, a delegation's reason, why the engine acted
  note text,
  -- approve / reject: who had handed the slot to this user
  delegated_from text,
  -- delegate: who got the slot; escalated: who the request passed to
  to_user text,
  decided_at timestamptz not null default now(),
  check ((user_id is null) = (decision in ('escalated', 'expired', 'cancelled')))
);

create index approval_decisions_request_idx on conveyor.approval_decisions (request_id, decision_id);
-- the requests a user has acted on (conveyor.list_approvals with every request)
create index approval_decisions_user_idx on conveyor.approval_decisions (tenant_id, user_id)
where user_id is not null;

alter table conveyor.approval_requests enable row level security;
alter table conveyor.approval_requests force row level security;
create policy approval_requests_isolation on conveyor.approval_requests
using (tenant_id = (select conveyor.current_tenant()));

alter table conveyor.approval_decisions enable row level security;
alter table conveyor.approval_decisions force row level security;
create policy approval_decisions_isolation on conveyor.approval_decisions
using (tenant_id = (select conveyor.current_tenant()));

grant select on conveyor.approval_requests, conveyor.approval_decisions to conveyor_app;
grant select, insert, update, delete on conveyor.approval_requests, conveyor.approval_decisions to conveyor_service;

-- (with flow control's 'slot' and 'debounce', migration 0033, which may have been applied
-- before this one: applied after it, this must not take them away)
alter table conveyor.executions drop constraint executions_wait_kind_check;
alter table conveyor.executions add constraint executions_wait_kind_check
check (wait_kind in ('action', 'delay', 'event', 'children', 'turn', 'slot', 'debounce', 'approval'));

-- An approval's due time is found by the due scan's one probe, with delays and waits.
drop index conveyor.executions_due_scan_idx;
create index executions_due_scan_idx on conveyor.executions (resume_at, execution_id)
where status = 'waiting' and wait_kind in ('delay', 'event', 'approval') and paused_at is null;

alter table conveyor.workflow_steps drop constraint workflow_steps_kind_check;
alter table conveyor.workflow_steps add constraint workflow_steps_kind_check
check (kind in (
  'action', 'condition', 'switch', 'set_variable', 'transform', 'stop', 'emit', 'data', 'delay', 'wait_for_event',
  'wait_until', 'split', 'parallel', 'for_each', 'call', 'notify', 'approval'
));
