-- Dead letters: action messages the engine stopped redelivering, kept with why.
--
-- A message is dead-lettered when its body is malformed (the runner cannot perform it),
-- when it was delivered more than conveyor.max_action_deliveries times without a result,
-- when its step run no longer waits for it, or when the database refused its result
-- (sql/actions.sql). Its step fails with the reason (when it names a step run still
-- waiting for it), the message is archived, and a copy is kept here until an operator
-- requeues it (conveyor.requeue_dead_letter, `conveyor actions requeue`) or the retention
-- prune removes it (conveyor.prune_history). docs/queue.md describes them.
create table conveyor.dead_letters (
  dead_letter_id bigint generated always as identity primary key,
  -- the step run's tenant; else the tenant the body names (null: none); no foreign key,
  -- so a body naming a tenant that does not exist is still kept
  tenant_id text,
  msg_id bigint not null,
  -- what the message names, when it names a step run that exists
  step_run_id bigint,
  execution_id bigint,
  step_id text,
  message jsonb,
  reason text not null check (reason in ('malformed_message', 'max_deliveries', 'step_run_gone', 'result_refused')),
  -- the last error: what made the engine give up on the message
  last_error text not null,
  -- deliveries of the message (pgmq's read_ct)
  attempts integer not null,
  enqueued_at timestamptz,
  dead_at timestamptz not null default now()
);

create index dead_letters_tenant_idx on conveyor.dead_letters (tenant_id, dead_letter_id);
create index dead_letters_dead_at_idx on conveyor.dead_letters (dead_at);
-- recover_stalled_actions leaves a dead-lettered step run alone
create index dead_letters_step_run_idx on conveyor.dead_letters (step_run_id) where step_run_id is not null;

alter table conveyor.dead_letters enable row level security;
alter table conveyor.dead_letters force row level security;
create policy dead_letters_isolation on conveyor.dead_letters
using (tenant_id = (select conveyor.current_tenant()));

grant select on conveyor.dead_letters to conveyor_app;
grant select, insert, update, delete on conveyor.dead_letters to conveyor_service;
