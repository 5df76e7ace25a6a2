-- Approvals (docs/approvals.md): the request an approval step makes, and what people do
-- with it: approve, reject, delegate, list. How a decided, due or cancelled request moves
-- its execution on is sql/approval_outcomes.sql.
--
-- A request has one slot per approver (approval_requests.approvers / delegated_from /
-- votes). Parallel: every slot is asked at once; sequence: one at a time, in order, the
-- next when the one before approves. The quorum ("all", "any", {"at_least": n}) is the
-- approvals that approve it (needed); it is rejected once they can no longer be reached
-- (in sequence: at the first rejection).
--
-- Exactly once: every decision locks the request row first (`for update`), so decisions
-- on one request queue, each sees the votes before it, and the one that decides the
-- request is the only one that sees it pending and decided. It writes the audit row,
-- evaluates the quorum and, when that decides the request, continues the execution in the
-- same transaction, taking the execution's lock with skip locked: an execution locked at
-- that instant (a tick, a cancel) or paused leaves the request 'decided' for the tick
-- (conveyor.approval_due). Lock order: request, then execution (skip locked) here;
-- execution, then request in the tick and in cancel, which never wait on a decision.
--
-- Every application function is tenant-checked (conveyor.require_tenant) and acts for one
-- user, the one the platform has authenticated: a request of another tenant is refused
-- like one that does not exist, a user holding no slot like a stranger.

-- What conveyor.approval_slot tells a caller: the errors of the SQL API, by SQLSTATE
-- (`conveyor serve` maps them to HTTP): P0002 no such request (404), 42501 not an
-- approver (403), 55000 the request or the slot cannot take it now (409), 22023 a bad
-- argument (400), 54000 a limit (409).

-- The note or reason of a decision, at most conveyor.max_approval_note_bytes.
create or replace function conveyor.approval_note(p_note text, p_what text)
returns text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_max bigint := conveyor.limit_setting('max_approval_note_bytes', 4000);
begin
  if octet_length(p_note) > v_max then
    raise exception using errcode = '54000',
      message = format('the %s is %s bytes, at most %s (setting conveyor.max_approval_note_bytes)', p_what,
        octet_length(p_note), v_max);
  end if;
  return nullif(btrim(p_note), '');
end;
$$;

-- The slot asked now of a pending request (1-based): in sequence the first without a vote,
-- in parallel every slot without a vote is asked (null here).
create or replace function conveyor.approval_turn(p_request conveyor.approval_requests)
returns integer
language sql
immutable
set search_path = ''
as $$
  select case when p_request.mode = 'sequence' then (
    select min(v.n)::integer from unnest(p_request.votes) with ordinality as v (vote, n) where v.vote is null
  ) end;
$$;

-- Whether p_user is asked now: holds a slot without a vote that is its turn.
create or replace function conveyor.approval_asked(p_request conveyor.approval_requests, p_user text)
returns boolean
language sql
immutable
set search_path = ''
as $$
  select p_request.state = 'pending' and exists (
    select from unnest(p_request.approvers, p_request.votes) with ordinality as s (holder, vote, n)
    where s.holder = p_user and s.vote is null
      and (p_request.mode = 'parallel' or s.n = conveyor.approval_turn(p_request))
  );
$$;

-- The outcome the votes decide, or null while undecided.
create or replace function conveyor.approval_outcome(p_request conveyor.approval_requests)
returns text
language sql
immutable
set search_path = ''
as $$
  select case
    when v.approved >= p_request.needed then 'approved'
    when v.rejected > cardinality(p_request.votes) - p_request.needed then 'rejected'
    when p_request.mode = 'sequence' and v.rejected > 0 then 'rejected'
  end
  from (
    select count(*) filter (where x.vote = 'approve') as approved, count(*) filter (where x.vote = 'reject') as rejected
    from unnest(p_request.votes) as x (vote)
  ) as v;
$$;

-- Notifies the holders of p_slots (in-app, type action_required, category approval).
create or replace function conveyor.approval_notify(p_request conveyor.approval_requests, p_slots integer[], p_where text)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_slot integer;
begin
  foreach v_slot in array p_slots loop
    perform conveyor.insert_notification(
      p_request.tenant_id, p_request.approvers[v_slot],
      -- the approval_required template (a tenant's override of it included) gives the
      -- category, the email and the SMS; the in-app title and message are the step's own
      jsonb_build_object(
        'template', 'approval_required',
        'data', jsonb_build_object('subject', p_request.title,
          'requested_by', coalesce(p_request.requester, 'someone'), 'url', p_request.action_url),
        'title', p_request.title || case when p_request.escalated_at is not null then ' (escalated)' else '' end,
        'message', p_request.message, 'type', 'action_required',
        'action_url', p_request.action_url, 'action_label', 'Review', 'entity_type', 'approval_request',
        'entity_id', p_request.request_id::text, 'group_key', 'approval-' || p_request.request_id
      ),
      p_where, p_request.execution_id, p_request.step_id
    );
  end loop;
end;
$$;

-- An approval step begins (called by the interpreter, in the transaction that reached
-- it): the rendered approvers (a user id, a list, lists from templates; duplicates once;
-- the requester left out when requester_may_approve is false), at most
-- conveyor.max_approvers, checked against the quorum; the request is written and the
-- slots asked now are notified. Returns the step's output while it waits ({"request_id",
-- "approvers", "mode", "quorum", "needed", "due_at", ...}). p_dry: nothing is written.
create or replace function conveyor.approval_begin(
  p_exec conveyor.executions,
  p_step_id text,
  p_visit integer,
  p_input jsonb,
  p_now timestamptz,
  p_dry boolean,
  p_where text
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_where text := p_where || '.approval';
  v_max bigint := conveyor.limit_setting('max_approvers', 25);
  v_given jsonb := p_input -> 'approvers';
  v_approvers text[];
  v_requester text := nullif(btrim(p_input ->> 'requester'), '');
  v_may boolean := coalesce((p_input ->> 'requester_may_approve')::boolean, true);
  v_left_out text[] := '{}';
  v_mode text := coalesce(p_input ->> 'mode', 'parallel');
  v_quorum jsonb := coalesce(p_input -> 'quorum', '"all"');
  v_needed integer;
  v_due interval;
  v_escalate_to text := nullif(btrim(p_input ->> 'escalate_to'), '');
  v_request conveyor.approval_requests;
  v_bad jsonb;
  v_problem text;
begin
  if jsonb_typeof(v_given) in ('string', 'number') then
    v_given := jsonb_build_array(v_given);
  end if;
  if jsonb_typeof(v_given) is distinct from 'array' then
    raise exception using errcode = '22023',
      message = format('%s.approvers: expected a user id or a list of user ids (got %s)', v_where,
        coalesce(v_given::text, 'nothing'));
  end if;
  -- a template in the list may give a list of its own: one level is flattened
  select coalesce(jsonb_agg(x.v order by e.n, x.n), '[]') into v_given
  from jsonb_array_elements(v_given) with ordinality as e (v, n)
  cross join lateral jsonb_array_elements(case when jsonb_typeof(e.v) = 'array' then e.v else jsonb_build_array(e.v) end)
    with ordinality as x (v, n);
  if jsonb_array_length(v_given) > v_max then
    raise exception using errcode = '54000',
      message = format('%s.approvers: %s approvers, at most %s may be asked by one step (setting conveyor.max_approvers)',
        v_where, jsonb_array_length(v_given), v_max);
  end if;
  select e.v into v_bad from jsonb_array_elements(v_given) as e (v)
  where jsonb_typeof(e.v) not in ('string', 'number') or btrim(e.v #>> '{}') = '' limit 1;
  if found then
    raise exception using errcode = '22023',
      message = format('%s.approvers: an approver must be a user id, not %s', v_where, v_bad::text);
  end if;
  select array_agg(d.u order by d.n) into v_approvers
  from (
    select btrim(e.v #>> '{}') as u, min(e.n) as n from jsonb_array_elements(v_given) with ordinality as e (v, n)
    group by 1
  ) as d;
  if not v_may then
    if v_requester is null then
      raise exception using errcode = '22023',
        message = format('%s.requester: requester_may_approve is false but the requester is empty', v_where);
    end if;
    if v_requester = any(v_approvers) then
      v_left_out := array[v_requester];
      v_approvers := array_remove(v_approvers, v_requester);
    end if;
    if v_escalate_to = v_requester then
      raise exception using errcode = '22023',
        message = format('%s.escalate_to: %s is the requester, who may not approve (requester_may_approve is false)',
          v_where, v_requester);
    end if;
  end if;
  if coalesce(cardinality(v_approvers), 0) = 0 then
    raise exception using errcode = '22023',
      message = format('%s.approvers: nobody to ask%s', v_where,
        case when cardinality(v_left_out) > 0 then format(' (the requester %s may not approve)', v_requester) else '' end);
  end if;

  if v_mode not in ('sequence', 'parallel') then
    raise exception using errcode = '22023',
      message = format('%s.mode: expected "sequence" or "parallel" (got %s)', v_where, p_input -> 'mode');
  end if;
  v_problem := conveyor.document_quorum_error(v_quorum, v_where || '.quorum', cardinality(v_approvers), 'approver(s)');
  if v_problem is not null then
    raise exception using errcode = '22023',
      message = v_problem
        || case when cardinality(v_left_out) > 0 then format(' besides the requester %s', v_requester) else '' end;
  end if;
  v_needed := case
    when v_quorum = '"all"' then cardinality(v_approvers)
    when v_quorum = '"any"' then 1
    else (v_quorum ->> 'at_least')::integer
  end;
  v_due := conveyor.parse_duration(p_input ->> 'due');
  if v_due is null then
    raise exception using errcode = '22023', message = format('%s.due: a duration is required', v_where);
  end if;

  v_request.tenant_id := p_exec.tenant_id;
  v_request.request_id := pg_catalog.nextval(pg_catalog.pg_get_serial_sequence('conveyor.approval_requests', 'request_id'));
  v_request.execution_id := p_exec.execution_id;
  v_request.workflow_id := p_exec.workflow_id;
  v_request.step_id := p_step_id;
  v_request.visit := p_visit;
  v_request.title := coalesce(nullif(btrim(p_input ->> 'title'), ''), format('Approval needed: %s', p_step_id));
  v_request.message := coalesce(p_input ->> 'message', '');
  v_request.action_url := replace(coalesce(nullif(btrim(p_input ->> 'action_url'), ''), '/approvals/{request_id}'),
    '{request_id}', v_request.request_id::text);
  v_request.mode := v_mode;
  v_request.quorum := case when jsonb_typeof(v_quorum) = 'object' then 'at_least' else v_quorum #>> '{}' end;
  v_request.needed := v_needed;
  v_request.approvers := v_approvers;
  v_request.delegated_from := array_fill(null::text, array[cardinality(v_approvers)]);
  v_request.votes := array_fill(null::text, array[cardinality(v_approvers)]);
  v_request.requester := v_requester;
  v_request.requester_may_approve := v_may;
  v_request.state := 'pending';
  v_request.due_at := p_now + v_due;
  v_request.escalate_to := v_escalate_to;
  v_request.escalation_due := case
    when v_escalate_to is not null then coalesce(conveyor.parse_duration(p_input ->> 'escalation_due'), v_due)
  end;
  v_request.delegations := 0;
  v_request.created_at := now();
  if not p_dry then
    insert into conveyor.approval_requests overriding system value select v_request.*;
    perform conveyor.approval_notify(
      v_request,
      case when v_mode = 'sequence' then array[1] else array(select generate_series(1, cardinality(v_approvers))) end,
      v_where
    );
  end if;
  return jsonb_build_object(
    'request_id', case when not p_dry then v_request.request_id end, 'approvers', to_jsonb(v_approvers),
    'mode', v_mode, 'quorum', v_quorum, 'needed', v_needed, 'due_at', v_request.due_at,
    'requester', v_requester, 'escalate_to', v_escalate_to, 'action_url', v_request.action_url
  )
    || case when cardinality(v_left_out) > 0 then jsonb_build_object('left_out', to_jsonb(v_left_out)) else '{}' end
    || case when p_dry then '{"outcome": "approved", "dry_run": true}'::jsonb else '{}' end;
end;
$$;

-- The tenant's pending request p_request_id, locked, and the slot p_user holds without a
-- vote (1-based), for a decision or a delegation; refused with a clear error otherwise.
-- p_turn: the slot must be asked now (a decision; a delegation may be made ahead).
create or replace function conveyor.approval_slot(
  p_tenant_id text,
  p_user_id text,
  p_request_id bigint,
  p_turn boolean,
  out request conveyor.approval_requests,
  out slot integer
)
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_to text;
begin
  perform conveyor.require_tenant(p_tenant_id);
  if p_user_id is null or btrim(p_user_id) = '' then
    raise exception using errcode = '22023', message = 'a user id is required',
      hint = 'Pass the user who decides (the user the platform has authenticated).';
  end if;
  select * into request from conveyor.approval_requests as r
  where r.request_id = p_request_id and r.tenant_id = p_tenant_id
  for update;
  if not found then
    raise exception using errcode = 'P0002',
      message = format('approval request %s does not exist for tenant %L', coalesce(p_request_id::text, 'null'),
        p_tenant_id);
  end if;
  if request.state <> 'pending' then
    raise exception using errcode = '55000',
      message = format('approval request %s is already %s', p_request_id, request.outcome);
  end if;
  if not request.requester_may_approve and p_user_id = request.requester then
    raise exception using errcode = '42501',
      message = format('user %L requested approval request %s and may not approve it (requester_may_approve is false)',
        p_user_id, p_request_id);
  end if;
  select min(s.n)::integer into slot
  from unnest(request.approvers, request.votes) with ordinality as s (holder, vote, n)
  where s.holder = p_user_id and s.vote is null;
  if slot is null then
    if p_user_id = any(request.approvers) then
      raise exception using errcode = '55000',
        message = format('user %L has already decided approval request %s (%s)', p_user_id, p_request_id,
          request.votes[array_position(request.approvers, p_user_id)]);
    end if;
    select d.to_user into v_to from conveyor.approval_decisions as d
    where d.request_id = p_request_id and d.user_id = p_user_id and d.decision = 'delegate'
    order by d.decision_id desc limit 1;
    raise exception using errcode = '42501',
      message = case
        when v_to is not null then format('user %L is no longer an approver of approval request %s (delegated to %L)',
          p_user_id, p_request_id, v_to)
        when request.escalated_at is not null then format(
          'user %L is no longer an approver of approval request %s: it was escalated to %L', p_user_id, p_request_id,
          request.escalate_to)
        else format('user %L is not an approver of approval request %s', p_user_id, p_request_id)
      end;
  end if;
  if p_turn and request.mode = 'sequence' and slot <> conveyor.approval_turn(request) then
    raise exception using errcode = '55000',
      message = format('approval request %s asks its approvers in sequence: it waits for %L (approver %s of %s), not %L',
        p_request_id, request.approvers[conveyor.approval_turn(request)], conveyor.approval_turn(request),
        cardinality(request.approvers), p_user_id);
  end if;
end;
$$;

-- p_user approves or rejects the request (p_decision 'approve' | 'reject') with an
-- optional note: the vote and its audit row, then the quorum; a decided request continues
-- its execution now (or, when the execution is locked or paused, at the next tick), in
-- sequence the next approver is asked. Returns {"request_id", "decision", "state",
-- "outcome", "continued"}.
create or replace function conveyor.decide_approval(
  p_tenant_id text,
  p_user_id text,
  p_request_id bigint,
  p_decision text,
  p_note text default null
) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_pick record;
  v_request conveyor.approval_requests;
  v_slot integer;
  v_note text;
  v_outcome text;
  v_continued boolean := false;
begin
  perform conveyor.require_tenant(p_tenant_id);
  if p_decision is null or p_decision not in ('approve', 'reject') then
    raise exception using errcode = '22023',
      message = format('decision: %L is not a decision (approve or reject)', p_decision);
  end if;
  v_note := conveyor.approval_note(p_note, 'note');
  select * into v_pick from conveyor.approval_slot(p_tenant_id, p_user_id, p_request_id, true);
  v_request := v_pick.request;
  v_slot := v_pick.slot;

  v_request.votes[v_slot] := p_decision;
  insert into conveyor.approval_decisions (tenant_id, request_id, user_id, decision, note, delegated_from)
  values (p_tenant_id, p_request_id, p_user_id, p_decision, v_note, v_request.delegated_from[v_slot]);
  v_outcome := conveyor.approval_outcome(v_request);
  update conveyor.approval_requests as r
  set
    votes = v_request.votes,
    outcome = v_outcome,
    state = case when v_outcome is null then 'pending' else 'decided' end,
    decided_at = case when v_outcome is not null then now() end
  where r.request_id = p_request_id
  returning * into v_request;
  if v_outcome is not null then
    v_continued := conveyor.approval_settle(v_request, now());
  elsif v_request.mode = 'sequence' then
    perform conveyor.approval_notify(v_request, array[conveyor.approval_turn(v_request)],
      format('approval request %s', p_request_id));
  end if;
  return jsonb_build_object(
    'request_id', p_request_id, 'decision', p_decision, 'user', p_user_id,
    'state', case when v_continued then 'closed' else v_request.state end, 'outcome', v_outcome,
    'continued', v_continued
  );
end;
$$;

-- p_user hands their slot (one without a vote) to p_to_user, with a reason: the audit row
-- names both; p_to_user is notified when the slot is asked now. At most
-- conveyor.max_approval_delegations per request. Returns {"request_id", "delegated_to",
-- "state"}.
create or replace function conveyor.delegate_approval(
  p_tenant_id text,
  p_user_id text,
  p_request_id bigint,
  p_to_user text,
  p_reason text default null
) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_pick record;
  v_request conveyor.approval_requests;
  v_slot integer;
  v_reason text;
  v_to text := btrim(p_to_user);
  v_max bigint := conveyor.limit_setting('max_approval_delegations', 10);
begin
  perform conveyor.require_tenant(p_tenant_id);
  v_reason := conveyor.approval_note(p_reason, 'reason');
  select * into v_pick from conveyor.approval_slot(p_tenant_id, p_user_id, p_request_id, false);
  v_request := v_pick.request;
  v_slot := v_pick.slot;
  if v_to is null or v_to = '' then
    raise exception using errcode = '22023', message = format('delegate approval request %s: to whom? (to_user is empty)',
      p_request_id);
  end if;
  if v_to = p_user_id then
    raise exception using errcode = '22023',
      message = format('user %L cannot delegate approval request %s to themselves', p_user_id, p_request_id);
  end if;
  if v_to = any(v_request.approvers) then
    raise exception using errcode = '55000',
      message = format('user %L is already an approver of approval request %s', v_to, p_request_id);
  end if;
  if not v_request.requester_may_approve and v_to = v_request.requester then
    raise exception using errcode = '42501',
      message = format('user %L requested approval request %s and may not approve it (requester_may_approve is false)',
        v_to, p_request_id);
  end if;
  if v_request.delegations >= v_max then
    raise exception using errcode = '54000',
      message = format('approval request %s has been delegated %s times, at most %s (setting conveyor.max_approval_delegations)',
        p_request_id, v_request.delegations, v_max);
  end if;

  insert into conveyor.approval_decisions (tenant_id, request_id, user_id, decision, note, delegated_from, to_user)
  values (p_tenant_id, p_request_id, p_user_id, 'delegate', v_reason, v_request.delegated_from[v_slot], v_to);
  v_request.approvers[v_slot] := v_to;
  v_request.delegated_from[v_slot] := p_user_id;
  update conveyor.approval_requests as r
  set approvers = v_request.approvers, delegated_from = v_request.delegated_from, delegations = r.delegations + 1
  where r.request_id = p_request_id
  returning * into v_request;
  if conveyor.approval_asked(v_request, v_to) then
    perform conveyor.approval_notify(v_request, array[v_slot], format('approval request %s', p_request_id));
  end if;
  return jsonb_build_object('request_id', p_request_id, 'user', p_user_id, 'delegated_to', v_to, 'state', v_request.state);
end;
$$;

-- The requests of p_user, newest first: with p_pending_only those that ask them now, else
-- every request in which they hold a slot or have acted; at most p_limit (1 to 500).
create or replace function conveyor.list_approvals(
  p_tenant_id text,
  p_user_id text,
  p_pending_only boolean default true,
  p_limit integer default 100
) returns table (
  request_id bigint,
  execution_id bigint,
  workflow text,
  step_id text,
  title text,
  message text,
  action_url text,
  state text,
  outcome text,
  mode text,
  quorum text,
  needed integer,
  approvers text[],
  votes text[],
  requester text,
  asked boolean,
  due_at timestamptz,
  escalated_at timestamptz,
  created_at timestamptz,
  decided_at timestamptz
)
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  perform conveyor.require_tenant(p_tenant_id);
  if p_user_id is null or btrim(p_user_id) = '' then
    raise exception using errcode = '22023', message = 'a user id is required',
      hint = 'Pass the user whose approvals these are (the user the platform has authenticated).';
  end if;
  if p_limit is null or p_limit < 1 or p_limit > 500 then
    raise exception using errcode = '22023',
      message = format('p_limit: %s is not a number of approval requests (1 to 500)', coalesce(p_limit::text, 'null'));
  end if;
  return query
  with mine as (
    select r.request_id from conveyor.approval_requests as r
    where r.tenant_id = p_tenant_id and r.approvers @> array[p_user_id]
    union
    select d.request_id from conveyor.approval_decisions as d
    where d.tenant_id = p_tenant_id and d.user_id = p_user_id and not coalesce(p_pending_only, true)
  )

  select
    r.request_id, r.execution_id, w.slug, r.step_id, r.title, r.message, r.action_url, r.state, r.outcome, r.mode,
    r.quorum, r.needed, r.approvers, r.votes, r.requester, conveyor.approval_asked(r, p_user_id), r.due_at,
    r.escalated_at, r.created_at, r.decided_at
  from mine as m
  join conveyor.approval_requests as r on r.request_id = m.request_id
  left join conveyor.workflows as w on w.workflow_id = r.workflow_id
  where not coalesce(p_pending_only, true) or conveyor.approval_asked(r, p_user_id)
  order by r.request_id desc
  limit p_limit;
end;
$$;

revoke all on function conveyor.approval_begin(conveyor.executions, text, integer, jsonb, timestamptz, boolean, text)
from public;
revoke all on function conveyor.approval_slot(text, text, bigint, boolean) from public;
