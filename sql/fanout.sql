-- Fan-out: how parallel, for_each and call steps (sql/steps/) start their children.
--
-- One mechanism for the three: a branch, an item or a call is a child execution of its
-- own (its own timeline, retries, pause and cancel), linked to its parent
-- (executions.parent_execution_id, fanout_id, child_index) and run by the same
-- interpreter. A parallel branch or a for_each item runs the body's steps of the parent's
-- workflow version, starting at the body's first step, with the parent's variables (a
-- copy), {{item}} / {{index}} (executions.item), and the parent's trigger and step outputs:
-- those are kept once, in the fan-out's context, and the interpreter reads them from there
-- (a child stores only its own step outputs), so a for_each over a list in its trigger
-- stores that list once, not once per item. A call runs the callee's current version. The parent waits (wait_kind 'children') on one
-- conveyor.fanouts row: every finishing child updates its counters in the transaction
-- that finishes it, and the join is decided from the counters alone
-- (sql/fanout_join.sql); nothing walks the children until the join is reached, when their
-- outputs are gathered once.
--
-- Budgets: a fan-out step makes at most conveyor.max_fanout_children children, an
-- execution at most conveyor.max_fanout_children_per_execution over all its fan-outs,
-- and the children count in the event chain's executions (conveyor.max_chain_executions)
-- and depth (conveyor.max_event_depth: a child is one deeper than its parent, so calls
-- that call each other end there). The children's copies of the parent's variables are
-- bounded too (conveyor.max_fanout_state_bytes).

create or replace function conveyor.max_fanout_children()
returns integer
language sql
stable
set search_path = ''
as $$
  select conveyor.limit_setting('max_fanout_children', 1000)::integer;
$$;

-- A join: "all", "any" or {"at_least": n} with n at most p_branches (when known).
create or replace function conveyor.fanout_join_error(p_join jsonb, p_path text, p_branches bigint)
returns text
language sql
immutable
set search_path = ''
as $$
  select conveyor.document_quorum_error(p_join, p_path, p_branches, 'branch(es)');
$$;

-- The child of a call step: the callee (the tenant's workflow of the rendered slug, its
-- current version pinned now), its entry step and trigger object (the input is its
-- payload; the caller is named in it).
create or replace function conveyor.call_child(p_exec conveyor.executions, p_step_id text, p_input jsonb, p_where text)
returns jsonb
language plpgsql
stable
set search_path = ''
as $$
declare
  v_slug text := p_input ->> 'workflow';
  v_workflow conveyor.workflows;
  v_entry text;
begin
  select * into v_workflow from conveyor.workflows as w where w.tenant_id = p_exec.tenant_id and w.slug = v_slug;
  if v_workflow.current_version is null then
    raise exception using errcode = '22023',
      message = format('%s: call.workflow: tenant "%s" has no published workflow "%s"', p_where, p_exec.tenant_id,
        coalesce(v_slug, 'null'));
  end if;
  select v.entry_step into v_entry
  from conveyor.workflow_versions as v
  where v.workflow_id = v_workflow.workflow_id and v.version = v_workflow.current_version;
  return jsonb_build_object(
    'key', 0, 'workflow_id', v_workflow.workflow_id, 'version', v_workflow.current_version, 'entry', v_entry,
    'workflow', v_slug,
    'trigger', jsonb_build_object(
      'event_id', p_exec.event_id, 'event_type', 'workflow.called', 'source', 'workflow',
      'entity_type', p_exec.entity_type, 'entity_id', p_exec.entity_id,
      'payload', coalesce(p_input -> 'input', '{}'),
      'caller', jsonb_build_object('execution_id', p_exec.execution_id, 'workflow_id', p_exec.workflow_id,
        'step', p_step_id),
      'changed_columns', null, 'occurred_at', now(), 'depth', p_exec.depth + 1
    )
  );
end;
$$;

-- Starts a fan-out step's children: p_children [{"key", "entry", "item"?} | a call's
-- child (conveyor.call_child)]. Returns the step's output: while children run,
-- {"fanout_id", "children", "started": [<ids to run>], "timeout_at"} (the interpreter runs
-- the started ones once its batch is written, conveyor.fanout_follow_up, and the step
-- waits); a join reached at once (no items; every child reused by a retry; a dry run,
-- whose children run here) gives the join's output; a call with "wait": false gives the
-- callee's execution and does not wait. Raises (failing the step) when a budget refuses.
--
-- A retry of a failed execution (retry_of) reuses what its fan-out at this step finished:
-- each child that completed there is copied as completed, only the others run again.
create or replace function conveyor.fanout_begin(
  p_exec conveyor.executions,
  p_step conveyor.workflow_steps,
  p_visit integer,
  p_kind text,
  p_input jsonb,
  p_children jsonb,
  p_now timestamptz,
  p_dry boolean,
  p_where text
)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_total integer := jsonb_array_length(p_children);
  v_join jsonb := p_input -> 'join';
  v_mode text := case
    when v_join is null or v_join = '"all"' then 'all' when v_join = '"any"' then 'any' else 'at_least'
  end;
  v_wait boolean := p_kind <> 'call' or coalesce((p_input ->> 'wait')::boolean, true);
  v_max integer := conveyor.max_fanout_children();
  v_max_exec bigint := conveyor.limit_setting('max_fanout_children_per_execution', 10000);
  v_max_state bigint := conveyor.limit_setting('max_fanout_state_bytes', 67108864);
  v_max_depth integer := conveyor.max_event_depth();
  v_concurrency integer := (p_input ->> 'concurrency')::numeric::integer;
  v_spent bigint;
  v_root bigint;
  v_chain integer;
  v_fanout conveyor.fanouts;
  v_old_fanout bigint;
  v_started bigint[];
  v_timeout_at timestamptz;
begin
  if v_total > v_max then
    raise exception using errcode = '54000',
      message = format('%s: %s %s exceed the limit of %s per step (setting conveyor.max_fanout_children)', p_where,
        v_total, case p_kind when 'for_each' then 'items' else 'children' end, v_max);
  end if;
  if v_total > 0 and p_exec.depth + 1 > v_max_depth then
    raise exception using errcode = '54000',
      message = format('%s: depth %s would exceed the limit %s (setting conveyor.max_event_depth)%s', p_where,
        p_exec.depth + 1, v_max_depth,
        case when p_kind = 'call' then '; workflows that call each other?' else '' end);
  end if;
  select coalesce(sum(f.total), 0) into v_spent from conveyor.fanouts as f where f.execution_id = p_exec.execution_id;
  if v_spent + v_total > v_max_exec then
    raise exception using errcode = '54000',
      message = format('%s: fan-out budget spent: execution %s has made %s children, %s more exceed its limit of %s'
        || ' (setting conveyor.max_fanout_children_per_execution)', p_where, p_exec.execution_id, v_spent, v_total,
        v_max_exec);
  end if;
  if p_kind <> 'call' and v_total::bigint * pg_catalog.pg_column_size(p_exec.vars) > v_max_state then
    raise exception using errcode = '54000',
      message = format('%s: %s children would copy %s bytes of this execution''s variables each, over the limit'
        || ' of %s bytes in all (setting conveyor.max_fanout_state_bytes)', p_where, v_total,
        pg_catalog.pg_column_size(p_exec.vars), v_max_state);
  end if;
  -- the chain's executions (sql/budgets.sql): the trigger event's chain
  if v_total > 0 and p_exec.event_id is not null and not p_dry then
    select coalesce(e.root_event_id, e.event_id) into v_root from conveyor.events as e where e.event_id = p_exec.event_id;
    insert into conveyor.event_chains as c (root_event_id, tenant_id, executions)
    values (v_root, p_exec.tenant_id, v_total)
    on conflict (root_event_id) do update set executions = c.executions + excluded.executions, updated_at = now()
    returning c.executions into v_chain;
    if v_chain > conveyor.limit_setting('max_chain_executions', 1000) then
      raise exception using errcode = '54000',
        message = format('%s: event chain budget spent: the chain of event %s has started %s executions with these'
          || ' %s children, its limit is %s (setting conveyor.max_chain_executions)', p_where, v_root, v_chain,
          v_total, conveyor.limit_setting('max_chain_executions', 1000));
    end if;
  end if;

  if p_dry then
    return conveyor.fanout_dry_run(p_exec, p_step, p_kind, v_mode, p_input, p_children);
  end if;

  if not v_wait then
    -- fire and forget: the callee is not linked to this execution, only named in its trigger
    v_started := conveyor.fanout_insert_children(p_exec, null, p_kind, p_children, null, '{}');
    return jsonb_build_object(
      'workflow', p_children -> 0 ->> 'workflow', 'version', (p_children -> 0 ->> 'version')::integer,
      'execution_id', v_started[1], 'status', 'started', 'wait', false, 'started', to_jsonb(v_started)
    );
  end if;

  if v_total = 0 then
    return jsonb_build_object('items', '[]'::jsonb, 'count', 0, 'completed', 0, 'failed', 0, 'cancelled', 0);
  end if;

  insert into conveyor.fanouts (
    tenant_id, execution_id, step_id, visit, kind, join_mode, needed, on_child_error, concurrency, total,
    context, parent_keys
  )
  values (
    p_exec.tenant_id, p_exec.execution_id, p_step.step_id, p_visit, p_kind, v_mode,
    case v_mode when 'all' then v_total when 'any' then 1 else (v_join ->> 'at_least')::numeric::integer end,
    coalesce(p_input ->> 'on_item_error', 'fail'), v_concurrency, v_total,
    case when p_kind <> 'call' then
      jsonb_build_object('trigger', p_exec.trigger, 'step_outputs', p_exec.step_outputs)
    else '{}' end,
    array(select jsonb_object_keys(p_exec.step_outputs))
  )
  returning * into v_fanout;

  if p_exec.retry_of is not null then
    select f.fanout_id into v_old_fanout
    from conveyor.fanouts as f
    where f.execution_id = p_exec.retry_of and f.step_id = p_step.step_id
    order by f.visit desc
    limit 1;
  end if;
  v_started := conveyor.fanout_insert_children(p_exec, v_fanout, p_kind, p_children, v_concurrency,
    coalesce((
      select jsonb_object_agg(c.child_index::text, c.execution_id)
      from conveyor.executions as c
      where v_old_fanout is not null and c.fanout_id = v_old_fanout and c.status = 'completed'
    ), '{}'));

  select * into v_fanout from conveyor.fanouts as f where f.fanout_id = v_fanout.fanout_id;
  if conveyor.fanout_outcome(v_fanout) is not null then
    -- every child was reused: the join is reached now
    update conveyor.fanouts as f set state = 'joined', outcome = conveyor.fanout_outcome(v_fanout)
    where f.fanout_id = v_fanout.fanout_id;
    return conveyor.fanout_result(v_fanout, p_where);
  end if;

  if p_input ? 'timeout' then
    v_timeout_at := p_now + conveyor.parse_duration(p_input ->> 'timeout');
  end if;
  return jsonb_build_object(
    'fanout_id', v_fanout.fanout_id, 'kind', p_kind, 'join', v_mode, 'children', v_total,
    'reused', v_fanout.succeeded, 'timeout_at', v_timeout_at, 'started', to_jsonb(v_started)
  );
end;
$$;

-- Inserts a fan-out's children (p_fanout null: a call that is not waited for) and returns
-- the ids of those to run now: the first p_concurrency (all when null) of those not
-- reused; the others wait their turn. p_reuse: {"<child index>": <completed execution>}
-- of the retried execution's fan-out, copied as completed. Updates the fan-out's counters.
create or replace function conveyor.fanout_insert_children(
  p_exec conveyor.executions,
  p_fanout conveyor.fanouts,
  p_kind text,
  p_children jsonb,
  p_concurrency integer,
  p_reuse jsonb
)
returns bigint[]
language plpgsql
set search_path = ''
as $$
declare
  v_started bigint[];
  v_reused integer;
  v_next_turn integer;
  v_calls bigint[];
begin
  with children as (
    select
      (c.n - 1)::integer as child_index, c.child, p_reuse ->> (c.n - 1)::text as reuse,
      count(*) filter (where not p_reuse ? (c.n - 1)::text) over (order by c.n) as nth_to_run
    from jsonb_array_elements(p_children) with ordinality as c (child, n)
  ),

  made as (
    insert into conveyor.executions (
      tenant_id, workflow_id, version, event_id, entity_type, entity_id, status, current_step, wait_kind, trigger,
      vars, step_outputs, depth, steps_run, started_at, finished_at, timeout_at, retry_of, parent_execution_id,
      fanout_id, child_index, item
    )
    select
      p_exec.tenant_id,
      coalesce((c.child ->> 'workflow_id')::bigint, p_exec.workflow_id),
      coalesce((c.child ->> 'version')::integer, p_exec.version),
      p_exec.event_id, p_exec.entity_type, p_exec.entity_id,
      case
        when c.reuse is not null then 'completed'
        when p_concurrency is null or c.nth_to_run <= p_concurrency then 'pending'
        else 'waiting'
      end,
      case when c.reuse is not null then null else c.child ->> 'entry' end,
      case when c.reuse is null and p_concurrency is not null and c.nth_to_run > p_concurrency then 'turn' end,
      -- a branch's or an item's trigger and earlier step outputs are its fan-out's context
      -- (conveyor.interpret_batch reads them from there); a dry run's children copy them
      case
        when c.child ? 'trigger' then c.child -> 'trigger'
        when p_fanout.fanout_id is not null then '{}'::jsonb
        else p_exec.trigger
      end,
      case when p_kind = 'call' then '{}'::jsonb else coalesce(o.vars, p_exec.vars) end,
      case
        when p_kind = 'call' then '{}'::jsonb
        when o.execution_id is not null then o.step_outputs
        when p_fanout.fanout_id is not null then '{}'::jsonb
        else p_exec.step_outputs
      end,
      p_exec.depth + 1, coalesce(o.steps_run, 0), o.started_at, o.finished_at,
      case when p_kind = 'call' then now() + v.timeout else p_exec.timeout_at end,
      o.execution_id,
      case when p_fanout.fanout_id is not null then p_exec.execution_id end,
      p_fanout.fanout_id,
      case when p_fanout.fanout_id is not null then c.child_index end,
      -- a branch keeps its parent's item (a parallel inside a for_each body); a call's
      -- callee sees none
      case p_kind
        when 'for_each' then c.child -> 'item'
        when 'parallel' then coalesce(p_exec.item, '{}') || jsonb_build_object('branch', c.child ->> 'key')
      end
    from children as c
    left join conveyor.executions as o on o.execution_id = (c.reuse)::bigint
    left join conveyor.workflow_versions as v
      on v.workflow_id = (c.child ->> 'workflow_id')::bigint and v.version = (c.child ->> 'version')::integer
    order by c.child_index
    returning execution_id, status, child_index
  )

  select
    coalesce(array_agg(m.execution_id order by m.execution_id) filter (where m.status = 'pending'), '{}'),
    count(*) filter (where m.status = 'completed'),
    coalesce(max(m.child_index) filter (where m.status = 'pending') + 1, 0)
  into v_started, v_reused, v_next_turn
  from made as m;

  if p_fanout.fanout_id is not null then
    update conveyor.fanouts as f
    set started = v_reused + pg_catalog.cardinality(v_started), open = pg_catalog.cardinality(v_started),
      succeeded = v_reused, next_turn = v_next_turn
    where f.fanout_id = p_fanout.fanout_id;
  end if;
  if p_kind = 'call' then
    -- a call's callee is a run of its workflow: counted in its stats (a branch or an item is part of its parent's)
    v_calls := v_started;
    perform conveyor.record_started(v_calls);
  end if;
  return v_started;
end;
$$;

-- The join's outcome from a fan-out's counters alone, or null while it is not reached:
-- mode "all" with on_child_error "fail" fails at the first failed child and completes
-- when all completed; with "continue" / "collect" it completes when all finished. "any"
-- and "at_least" complete when enough completed and fail when too few can.
create or replace function conveyor.fanout_outcome(p_fanout conveyor.fanouts)
returns text
language sql
immutable
set search_path = ''
as $$
  select case
    when p_fanout.join_mode = 'all' and p_fanout.on_child_error = 'fail' and p_fanout.failed > 0 then 'failed'
    when p_fanout.join_mode = 'all' and p_fanout.succeeded + p_fanout.failed = p_fanout.total then 'completed'
    when p_fanout.join_mode = 'all' then null
    when p_fanout.succeeded >= p_fanout.needed then 'completed'
    when p_fanout.succeeded + (p_fanout.total - p_fanout.succeeded - p_fanout.failed) < p_fanout.needed then 'failed'
  end;
$$;

-- What the step's output says of one child: its status, execution, the output of the
-- last step it completed, and its error.
create or replace function conveyor.fanout_child_result(p_child conveyor.executions)
returns jsonb
language sql
stable
set search_path = ''
as $$
  select jsonb_strip_nulls(jsonb_build_object(
    'status', p_child.status,
    'execution_id', p_child.execution_id,
    'error', p_child.error
  )) || jsonb_build_object('output', coalesce(
    (
      select r.output from conveyor.step_runs as r
      where r.execution_id = p_child.execution_id and r.status = 'completed'
      order by r.step_run_id desc
      limit 1
    ),
    -- a child reused by a retry: its original's
    (
      select r.output from conveyor.step_runs as r
      where r.execution_id = p_child.retry_of and r.status = 'completed'
      order by r.step_run_id desc
      limit 1
    )
  ));
$$;

-- The output of a fan-out step whose join is reached, from its children (read once, here):
--   parallel: {"branches": {"<name>": {status, execution_id, output, steps, error}}, counts};
--   for_each: {"items": [{index, status, execution_id, output, error}, ...] in order, counts,
--              and with on_item_error "collect" "errors": [{index, error}]};
--   call:     {workflow, version, execution_id, status, output, steps, error}.
-- Raises (failing the step) when the join failed or timed out, with the output as detail.
create or replace function conveyor.fanout_result(p_fanout conveyor.fanouts, p_where text)
returns jsonb
language plpgsql
stable
set search_path = ''
as $$
declare
  v_outcome text;
  v_counts jsonb;
  v_first_error jsonb;
  v_output jsonb;
begin
  select f.outcome into v_outcome from conveyor.fanouts as f where f.fanout_id = p_fanout.fanout_id;
  select
    jsonb_build_object(
      'completed', count(*) filter (where c.status = 'completed'),
      'failed', count(*) filter (where c.status in ('failed', 'timed_out')),
      'cancelled', count(*) filter (where c.status = 'cancelled'),
      'unfinished', count(*) filter (where c.status not in ('completed', 'failed', 'timed_out', 'cancelled'))
    ),
    (array_agg(c.error order by c.child_index) filter (where c.status in ('failed', 'timed_out')))[1]
  into v_counts, v_first_error
  from conveyor.executions as c
  where c.fanout_id = p_fanout.fanout_id;

  if p_fanout.kind = 'parallel' then
    select jsonb_build_object('join', p_fanout.join_mode, 'branches', jsonb_object_agg(
      c.item ->> 'branch',
      conveyor.fanout_child_result(c) || jsonb_build_object('steps', c.step_outputs - p_fanout.parent_keys)
    )) || v_counts
    into v_output
    from conveyor.executions as c
    where c.fanout_id = p_fanout.fanout_id;
  elsif p_fanout.kind = 'for_each' then
    select jsonb_build_object(
      'count', p_fanout.total,
      'items', jsonb_agg(jsonb_build_object('index', c.child_index) || conveyor.fanout_child_result(c)
        order by c.child_index)
    ) || v_counts || case when p_fanout.on_child_error = 'collect' then jsonb_build_object('errors', coalesce(
      jsonb_agg(jsonb_build_object('index', c.child_index, 'error', c.error) order by c.child_index)
        filter (where c.status in ('failed', 'timed_out')), '[]')) else '{}' end
    into v_output
    from conveyor.executions as c
    where c.fanout_id = p_fanout.fanout_id;
  else
    select jsonb_build_object('workflow', w.slug, 'version', c.version, 'steps', c.step_outputs)
      || conveyor.fanout_child_result(c)
    into v_output
    from conveyor.executions as c
    join conveyor.workflows as w on w.workflow_id = c.workflow_id
    where c.fanout_id = p_fanout.fanout_id and c.child_index = 0;
  end if;

  if v_outcome in ('failed', 'timed_out') then
    raise exception using errcode = 'CVFAN',
      message = format('%s: %s', p_where, case
        when v_outcome = 'timed_out' then format('the join timed out with %s of %s children finished',
          (v_counts ->> 'completed')::integer + (v_counts ->> 'failed')::integer, p_fanout.total)
        when p_fanout.kind = 'call' then
          format('the called workflow failed: %s', coalesce(v_first_error ->> 'message', 'failed'))
        when p_fanout.join_mode = 'all' then format('%s of %s %s failed: %s', v_counts ->> 'failed', p_fanout.total,
          case p_fanout.kind when 'for_each' then 'items' else 'branches' end,
          coalesce(v_first_error ->> 'message', 'failed'))
        else format('the join (%s %s of %s) cannot be reached: %s failed', p_fanout.join_mode, p_fanout.needed,
          p_fanout.total, v_counts ->> 'failed')
      end),
      detail = v_output::text;
  end if;
  return v_output;
end;
$$;

-- What a dry run shows for a fan-out step (sql/dry_run.sql): in a dry run (rolled back) the
-- children run at once, each as a dry execution of its own, and the step's output
-- gathers each one's decisions.
create or replace function conveyor.fanout_dry_run(
  p_exec conveyor.executions,
  p_step conveyor.workflow_steps,
  p_kind text,
  p_mode text,
  p_input jsonb,
  p_children jsonb
)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_ids bigint[];
  v_children jsonb;
begin
  v_ids := conveyor.fanout_insert_children(p_exec, null, p_kind, p_children, null, '{}');
  perform conveyor.advance_executions(v_ids, now());
  select jsonb_agg(jsonb_build_object(
    'key', c.child ->> 'key', 'execution_id', x.execution_id, 'status', x.status,
    'would', conveyor.dry_run_steps(x.execution_id)
  ) order by c.n)
  into v_children
  from unnest(v_ids) with ordinality as i (id, n)
  join jsonb_array_elements(p_children) with ordinality as c (child, n) on c.n = i.n
  join conveyor.executions as x on x.execution_id = i.id;
  return jsonb_build_object('kind', p_kind, 'join', p_mode, 'dry_run', true, 'children', coalesce(v_children, '[]'));
end;
$$;

-- How a dry run describes a fan-out step (conveyor.step_decision).
create or replace function conveyor.fanout_decision_text(p_output jsonb)
returns text
language sql
immutable
set search_path = ''
as $$
  select case
    when p_output ? 'children' and jsonb_typeof(p_output -> 'children') = 'array' then format(
      'would start %s %s (join %s): %s', jsonb_array_length(p_output -> 'children'),
      case p_output ->> 'kind' when 'for_each' then 'items' when 'call' then 'call' else 'branches' end,
      p_output ->> 'join',
      (select string_agg(format('%s %s', c ->> 'key', c ->> 'status'), ', ') from jsonb_array_elements(p_output -> 'children') as c))
    when p_output ->> 'wait' = 'false' then format('started workflow %s (not waited for)', p_output ->> 'workflow')
    else 'joined'
  end;
$$;

revoke all on function conveyor.call_child(conveyor.executions, text, jsonb, text) from public;
revoke all on function conveyor.fanout_begin(
  conveyor.executions, conveyor.workflow_steps, integer, text, jsonb, jsonb, timestamptz, boolean, text
) from public;
revoke all on function conveyor.fanout_insert_children(conveyor.executions, conveyor.fanouts, text, jsonb, integer, jsonb)
from public;
revoke all on function conveyor.fanout_dry_run(conveyor.executions, conveyor.workflow_steps, text, text, jsonb, jsonb)
from public;
