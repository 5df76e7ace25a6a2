-- The approval step: {"id", "approval": {"approvers", "due", "mode"?, "quorum"?, "title"?,
-- "message"?, "action_url"?, "requester"?, "requester_may_approve"?, "escalate_to"?,
-- "escalation_due"?}, "on_approved"?, "on_rejected"?, "on_expired"?}: people approve
-- inside the workflow. The execution waits (wait_kind 'approval') on one approval request
-- (conveyor.approval_begin, sql/approvals.sql) until it is decided, or its due time passes
-- (escalated once to escalate_to, else expired); docs/approvals.md.

-- The keys an approval spec may have besides approvers and due, in message order.
create or replace function conveyor.approval_keys()
returns text[]
language sql
immutable
parallel safe
set search_path = ''
as $$
  select array[
    'mode', 'quorum', 'title', 'message', 'action_url', 'requester', 'requester_may_approve', 'escalate_to',
    'escalation_due'
  ];
$$;

create or replace function conveyor.step_approval_errors(p_step jsonb, p_path text, p_step_ids jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_spec jsonb := p_step -> 'approval';
  v_path text := p_path || '.approval';
  v_max bigint := conveyor.limit_setting('max_approvers', 25);
  v_approvers jsonb := v_spec -> 'approvers';
  v_known integer;
  v_key text;
begin
  if jsonb_typeof(v_spec) is distinct from 'object' then
    return next format('%s: expected an object with "approvers" and "due"', v_path);
    return;
  end if;
  return query
  select k.message
  from conveyor.document_key_errors(v_spec, v_path, array['approvers', 'due'], conveyor.approval_keys()) as k (message);

  -- approvers: a user id, a template giving one or a list, or a list of them
  if jsonb_typeof(v_approvers) = 'array' then
    if jsonb_array_length(v_approvers) = 0 then
      return next format('%s.approvers: the list of approvers is empty', v_path);
    elsif jsonb_array_length(v_approvers) > v_max then
      return next format('%s.approvers: %s approvers, at most %s (setting conveyor.max_approvers)', v_path,
        jsonb_array_length(v_approvers), v_max);
    end if;
    return query
    select format('%s.approvers[%s]: expected a user id (got %s)', v_path, e.n - 1, e.v::text)
    from jsonb_array_elements(v_approvers) with ordinality as e (v, n)
    where jsonb_typeof(e.v) not in ('string', 'number') or btrim(e.v #>> '{}') = ''
    order by e.n;
    -- how many there are is known when no element is a template (a template may give a list)
    if not exists (
      select from jsonb_array_elements(v_approvers) as e (v) where strpos(e.v #>> '{}', '{{') > 0
    ) then
      v_known := (select count(distinct e.v #>> '{}') from jsonb_array_elements(v_approvers) as e (v));
    end if;
  elsif v_spec ? 'approvers' then
    if jsonb_typeof(v_approvers) not in ('string', 'number') or btrim(v_approvers #>> '{}') = '' then
      return next format('%s.approvers: expected a user id, a template or a list of user ids (got %s)', v_path,
        v_approvers::text);
    elsif strpos(v_approvers #>> '{}', '{{') = 0 then
      v_known := 1;
    end if;
  end if;

  if (v_spec ? 'mode') and (v_spec -> 'mode') not in ('"sequence"', '"parallel"') then
    return next format('%s.mode: expected "sequence" or "parallel" (got %s)', v_path, (v_spec -> 'mode')::text);
  end if;
  if v_spec ? 'quorum' then
    return query
    select q.message
    from (
      select conveyor.document_quorum_error(v_spec -> 'quorum', v_path || '.quorum', v_known, 'approver(s)') as message
    ) as q
    where q.message is not null;
  end if;
  foreach v_key in array array['due', 'escalation_due'] loop
    if v_spec ? v_key then
      return query
      select d.message
      from (select conveyor.document_duration_error(v_spec -> v_key, v_path || '.' || v_key) as message) as d
      where d.message is not null;
    end if;
  end loop;
  if (v_spec ? 'escalation_due') and not (v_spec ? 'escalate_to') then
    return next format('%s.escalation_due: only with "escalate_to" (the time the escalation approver has)', v_path);
  end if;
  if (v_spec ? 'requester_may_approve') and jsonb_typeof(v_spec -> 'requester_may_approve') <> 'boolean' then
    return next format('%s.requester_may_approve: expected true or false (got %s)', v_path,
      (v_spec -> 'requester_may_approve')::text);
  end if;
  if (v_spec ? 'requester_may_approve') and (v_spec -> 'requester_may_approve') = 'false'
    and not (v_spec ? 'requester') then
    return next format('%s.requester_may_approve: false needs "requester" (the user who may not approve)', v_path);
  end if;
  foreach v_key in array array['title', 'message', 'action_url', 'requester', 'escalate_to'] loop
    if (v_spec ? v_key) and (jsonb_typeof(v_spec -> v_key) not in ('string', 'number')
      or (v_key <> 'message' and btrim(v_spec ->> v_key) = '')) then
      return next format('%s.%s: expected a non-empty text (got %s)', v_path, v_key, (v_spec -> v_key)::text);
    end if;
  end loop;

  -- each field's templates on their own, so that a message names the field
  return query
  select t.message
  from jsonb_each(v_spec - array['due', 'escalation_due', 'mode', 'quorum', 'requester_may_approve']) as f (k, v)
  cross join lateral conveyor.document_template_errors(f.v, v_path || '.' || f.k, p_step_ids) as t (message)
  order by array_position(array['approvers'] || conveyor.approval_keys(), f.k);
end;
$$;

-- How an approval step runs (put into the interpreter by conveyor.generate_interpreter,
-- sql/step_kinds.sql): the request is made and its approvers notified; the execution
-- waits until it is decided or due (resume_at). A dry run asks nobody and follows
-- on_approved.
create or replace function conveyor.step_approval_code()
returns jsonb
language sql
immutable
parallel safe
set search_path = ''
as $$
  select pg_catalog.jsonb_build_object(
    'run', $code$
-- the request, its approvers notified (sql/approvals.sql)
v_output := conveyor.approval_begin(v_exec, v_step.step_id, v_visit, v_input, p_now, v_dry, v_where);
if v_dry then
  v_next := case when v_step.branches ? 'approved' then v_step.branches ->> 'approved' else v_step.next_step end;
else
  v_wait := 'approval';
  v_resume := (v_output ->> 'due_at')::timestamptz;
end if;
$code$,
    'decision', $code$pg_catalog.format('would ask %s for approval (%s, quorum %s); dry run follows on_approved', p_output ->> 'approvers', p_output ->> 'mode', p_output ->> 'quorum')$code$
  );
$$;
