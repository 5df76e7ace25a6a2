-- Approvals, moving on (docs/approvals.md): a decided request continues its execution
-- (approval_settle, approval_apply), the tick escalates or expires a request at its due
-- time and applies decisions an execution's lock or pause held back (approval_due), and an
-- execution ended from outside closes its request (approval_close). Making and deciding
-- requests is sql/approvals.sql, which explains the locking.

-- The approval step's output: {"request_id", "outcome", "decisions": [{"user",
-- "decision", "at", "note", "delegated_from"}], "delegations": [{"from", "to", "at",
-- "reason"}], "approvers", "mode", "quorum", "needed", "requester", "escalated",
-- "escalated_to", "due_at", "decided_at"}.
create or replace function conveyor.approval_output(p_request conveyor.approval_requests)
returns jsonb
language sql
stable
set search_path = ''
as $$
  select jsonb_build_object(
    'request_id', p_request.request_id, 'outcome', p_request.outcome,
    'decisions', coalesce((
      select jsonb_agg(jsonb_build_object(
        'user', d.user_id, 'decision', d.decision, 'at', d.decided_at, 'note', d.note,
        'delegated_from', d.delegated_from
      ) order by d.decision_id)
      from conveyor.approval_decisions as d
      where d.request_id = p_request.request_id and d.decision in ('approve', 'reject')
    ), '[]'),
    'delegations', coalesce((
      select jsonb_agg(jsonb_build_object('from', d.user_id, 'to', d.to_user, 'at', d.decided_at, 'reason', d.note)
        order by d.decision_id)
      from conveyor.approval_decisions as d
      where d.request_id = p_request.request_id and d.decision = 'delegate'
    ), '[]'),
    'approvers', to_jsonb(p_request.approvers), 'mode', p_request.mode, 'quorum', p_request.quorum,
    'needed', p_request.needed, 'requester', p_request.requester,
    'escalated', p_request.escalated_at is not null,
    'escalated_to', case when p_request.escalated_at is not null then p_request.escalate_to end,
    'due_at', p_request.due_at, 'decided_at', p_request.decided_at
  );
$$;

-- Continues the execution of a decided request (the caller holds both locks): its step
-- run completes with the request's output and the execution takes the outcome's route
-- (on_approved, on_rejected, on_expired) and runs on. An execution no longer waiting on
-- this request (it ended) only closes it. Returns whether the execution continued.
create or replace function conveyor.approval_apply(p_request conveyor.approval_requests, p_now timestamptz)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_exec conveyor.executions;
  v_output jsonb := conveyor.approval_output(p_request);
  v_next text;
begin
  update conveyor.approval_requests as r set state = 'closed' where r.request_id = p_request.request_id;
  select * into v_exec from conveyor.executions as e where e.execution_id = p_request.execution_id;
  if v_exec.status is distinct from 'waiting' or v_exec.wait_kind is distinct from 'approval'
    or v_exec.current_step is distinct from p_request.step_id then
    return false;
  end if;
  select case when s.branches ? p_request.outcome then s.branches ->> p_request.outcome else s.next_step end
  into v_next
  from conveyor.workflow_steps as s
  where s.workflow_id = v_exec.workflow_id and s.version = v_exec.version and s.step_id = v_exec.current_step;

  update conveyor.step_runs as r
  set status = 'completed', finished_at = now(), next_step = v_next, output = v_output
  where r.execution_id = v_exec.execution_id and r.step_id = v_exec.current_step and r.status = 'running';
  update conveyor.executions as e
  set
    status = 'running',
    wait_kind = null,
    resume_at = null,
    current_step = v_next,
    step_outputs = e.step_outputs || jsonb_build_object(v_exec.current_step, jsonb_build_object('output', v_output))
  where e.execution_id = v_exec.execution_id;
  perform conveyor.advance_executions(array[v_exec.execution_id], p_now);
  return true;
end;
$$;

-- A request just decided (locked by the caller, state 'decided'): its execution continues
-- now unless another transaction holds it (skip locked) or it is paused; then the tick
-- does it (conveyor.approval_due). Returns whether it continued now.
create or replace function conveyor.approval_settle(p_request conveyor.approval_requests, p_now timestamptz)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_paused timestamptz;
begin
  select e.paused_at into v_paused
  from conveyor.executions as e
  where e.execution_id = p_request.execution_id
  for update skip locked;
  if not found or v_paused is not null then
    return false;
  end if;
  return conveyor.approval_apply(p_request, p_now);
end;
$$;

-- The tick's approvals (conveyor.resume_due, when the due scan finds work): executions
-- whose request is due (resume_at) escalate it once to escalate_to, with escalation_due
-- to decide, or expire it and take on_expired; decided requests held back by a lock or a
-- pause move on (conveyor.next_due_at says so). Locks executions first (skip locked), then their requests. At most
-- p_limit of each; returns how many executions moved on or were escalated.
create or replace function conveyor.approval_due(p_now timestamptz, p_limit integer)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_exec record;
  v_request conveyor.approval_requests;
  v_n integer := 0;
begin
  for v_exec in
    select e.execution_id, e.current_step, e.resume_at
    from conveyor.executions as e
    where e.status = 'waiting' and e.wait_kind = 'approval' and e.resume_at <= p_now and e.paused_at is null
    order by e.resume_at, e.execution_id
    limit p_limit
    for update skip locked
  loop
    select * into v_request from conveyor.approval_requests as r
    where r.execution_id = v_exec.execution_id and r.step_id = v_exec.current_step and r.state <> 'closed'
    order by r.visit desc
    limit 1
    for update;
    if not found then
      perform conveyor.finish_execution(v_exec.execution_id, 'failed', jsonb_build_object(
        'step', v_exec.current_step,
        'message', format('step "%s": its approval request is missing', v_exec.current_step)
      ));
    elsif v_request.state = 'pending' and v_request.escalate_to is not null and v_request.escalated_at is null then
      update conveyor.approval_requests as r
      set
        approvers = array[r.escalate_to], delegated_from = array[null::text], votes = array[null::text],
        quorum = 'any', needed = 1, escalated_at = p_now, due_at = p_now + r.escalation_due
      where r.request_id = v_request.request_id
      returning * into v_request;
      insert into conveyor.approval_decisions (tenant_id, request_id, decision, note, to_user, decided_at)
      values (v_request.tenant_id, v_request.request_id, 'escalated',
        format('not decided by its due time %s', v_exec.resume_at), v_request.escalate_to, now());
      update conveyor.executions as e set resume_at = v_request.due_at where e.execution_id = v_exec.execution_id;
      perform conveyor.approval_notify(v_request, array[1], format('approval request %s', v_request.request_id));
    else
      if v_request.state = 'pending' then
        update conveyor.approval_requests as r set state = 'decided', outcome = 'expired', decided_at = p_now
        where r.request_id = v_request.request_id
        returning * into v_request;
        insert into conveyor.approval_decisions (tenant_id, request_id, decision, note)
        values (v_request.tenant_id, v_request.request_id, 'expired',
          format('not decided by its due time %s', v_exec.resume_at));
      end if;
      perform conveyor.approval_apply(v_request, p_now);
    end if;
    v_n := v_n + 1;
  end loop;

  for v_exec in
    select e.execution_id, r.request_id
    from conveyor.approval_requests as r
    join conveyor.executions as e on e.execution_id = r.execution_id
    where r.state = 'decided' and e.paused_at is null
    order by r.request_id
    limit p_limit
    for update of e skip locked
  loop
    select * into v_request from conveyor.approval_requests as r
    where r.request_id = v_exec.request_id and r.state = 'decided'
    for update;
    if found and conveyor.approval_apply(v_request, p_now) then
      v_n := v_n + 1;
    end if;
  end loop;
  return v_n;
end;
$$;

-- An execution ended from outside (conveyor.abort_execution: cancel, timeout) while
-- waiting on an approval: its open request is closed ('cancelled' when still pending),
-- with an audit row; a decision made after is refused.
create or replace function conveyor.approval_close(p_execution_id bigint, p_status text)
returns void
language plpgsql
security definer
set search_path = ''
as $$
begin
  with closed as (
    update conveyor.approval_requests as r
    set state = 'closed', outcome = coalesce(r.outcome, 'cancelled'), decided_at = coalesce(r.decided_at, now())
    where r.execution_id = p_execution_id and r.state <> 'closed'
    returning r.tenant_id, r.request_id
  )

  insert into conveyor.approval_decisions (tenant_id, request_id, decision, note)
  select c.tenant_id, c.request_id, 'cancelled', format('execution %s %s', p_execution_id, p_status)
  from closed as c;
end;
$$;

revoke all on function conveyor.approval_apply(conveyor.approval_requests, timestamptz) from public;
revoke all on function conveyor.approval_settle(conveyor.approval_requests, timestamptz) from public;
revoke all on function conveyor.approval_due(timestamptz, integer) from public;
revoke all on function conveyor.approval_close(bigint, text) from public;
