-- Fan-out: parallel branches, for_each items and calls of other workflows run as child
-- executions (sql/fanout.sql). The parent waits (wait_kind 'children') on one
-- conveyor.fanouts row whose counters the finishing children decrement, in the
-- transactions that finish them; nobody walks the children to decide whether the join is
-- reached. A for_each item not yet started waits for its turn (wait_kind 'turn').

create table conveyor.fanouts (
  fanout_id bigint generated always as identity primary key,
  tenant_id text not null,
  -- deferred: a new execution's first step may fan out before the execution is inserted
  -- (the interpreter writes each new execution once, in the state it reached)
  execution_id bigint not null references conveyor.executions (execution_id) on delete cascade
  deferrable initially deferred,
  step_id text not null,
  visit integer not null,
  kind text not null check (kind in ('parallel', 'for_each', 'call')),
  -- the join: 'all' children, 'any' one, 'at_least' needed of them
  join_mode text not null check (join_mode in ('all', 'any', 'at_least')),
  needed integer not null check (needed >= 0),
  -- what a failed child does to the join: 'fail' the step, or 'continue' / 'collect' (counted, the step goes on)
  on_child_error text not null check (on_child_error in ('fail', 'continue', 'collect')),
  -- at most this many children running at once (null: all of them)
  concurrency integer check (concurrency > 0),
  total integer not null check (total >= 0),
  started integer not null default 0,
  -- the lowest child index a for_each's next item can have (its items start in order):
  -- starting the next ones reads from here, not past every item started before
  next_turn integer not null default 0,
  open integer not null default 0 check (open >= 0),
  succeeded integer not null default 0,
  failed integer not null default 0,
  -- 'open' while children run; 'ready' once the join is decided (outcome), until the parent
  -- has moved on ('joined'); finishes after 'open' count nothing
  state text not null default 'open' check (state in ('open', 'ready', 'joined')),
  outcome text check (outcome in ('completed', 'failed', 'timed_out', 'cancelled')),
  -- what a branch or an item sees of its parent, kept once here rather than copied into
  -- every child: the parent's trigger and step outputs when the children were made
  -- ({"trigger", "step_outputs"}; the parent waits meanwhile, so they do not change)
  context jsonb not null default '{}',
  -- the keys of those step outputs: a child stores only its own (step ids are unique in a
  -- document), the interpreter puts the two together
  parent_keys text[] not null default '{}',
  created_at timestamptz not null default now(),
  check (started <= total and succeeded + failed <= started),
  check ((state = 'open') = (outcome is null))
);

create unique index fanouts_step_visit_idx on conveyor.fanouts (execution_id, step_id, visit);
-- decided joins whose parent was locked when they were decided: the tick applies them
create index fanouts_ready_idx on conveyor.fanouts (fanout_id) where state = 'ready';

alter table conveyor.fanouts enable row level security;
alter table conveyor.fanouts force row level security;
create policy fanouts_isolation on conveyor.fanouts
using (tenant_id = (select conveyor.current_tenant()));

grant select on conveyor.fanouts to conveyor_app;
grant select, insert, update, delete on conveyor.fanouts to conveyor_service;

-- A child execution: its parent (awaited children only; a call with wait false is not
-- linked), its fan-out and its place there, and for a for_each item {"item", "index"}.
-- No foreign key on parent_execution_id: the check would be queued for every execution
-- inserted, children or not, on the hot path.
alter table conveyor.executions add column parent_execution_id bigint;
alter table conveyor.executions add column fanout_id bigint;
alter table conveyor.executions add column child_index integer;
alter table conveyor.executions add column item jsonb;

create index executions_parent_idx on conveyor.executions (parent_execution_id)
where parent_execution_id is not null;
create unique index executions_fanout_child_idx on conveyor.executions (fanout_id, child_index)
where fanout_id is not null;

alter table conveyor.executions drop constraint executions_wait_kind_check;
alter table conveyor.executions add constraint executions_wait_kind_check
check (wait_kind in ('action', 'delay', 'event', 'children', 'turn'));

-- A join's timeout is due like a delay (conveyor.resume_due), read from its own index so
-- that the delay scan's index and plan stay as they were.
create index executions_join_due_idx on conveyor.executions (resume_at, execution_id)
where status = 'waiting' and wait_kind = 'children' and resume_at is not null and paused_at is null;

-- the step kinds parallel, for_each, call (sql/steps/) and split
alter table conveyor.workflow_steps drop constraint workflow_steps_kind_check;
alter table conveyor.workflow_steps add constraint workflow_steps_kind_check
check (kind in (
  'action', 'condition', 'switch', 'set_variable', 'transform', 'stop', 'emit', 'data', 'delay', 'wait_for_event',
  'wait_until', 'split', 'parallel', 'for_each', 'call'
));
