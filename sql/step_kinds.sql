-- Step kinds: the one declaration of what kinds of steps a workflow may have, read by
-- validation (conveyor.document_step_errors) and compilation (conveyor.compile_steps).
-- Each kind's own checks and compile additions live in its file under sql/steps/; adding
-- a kind means adding its file and its row below (docs/architecture.md, "Adding things").

-- One row per kind, in the order error messages list them:
--   kind: the compiled name (workflow_steps.kind); doc_key: the key that names the kind in
--   a document and holds its spec; keys: the other keys the step may have besides id,
--   doc_key and on_error, in the order messages list them; routes: those of keys that
--   name a step to go to (a step id, or null for the end); branches: the compiled
--   branches, {"<branch>": "<route>"} (null: the kind goes on to its next step; with
--   branches, next_step is only the fall-through of on_error "continue"); ends: the kind
--   has no next step; retries: on_error "retry" is possible; errors_function:
--   conveyor.<name>(p_step jsonb, p_path text, p_step_ids jsonb) returns setof text, the
--   kind's own problems; compiled_function (or null): conveyor.<name>(p_step jsonb,
--   p_fall_through text) returns jsonb, what compiling adds ({"action_type", "branches"}).
create or replace function conveyor.step_kinds()
returns table (
  kind text,
  doc_key text,
  keys text[],
  routes text[],
  branches jsonb,
  ends boolean,
  retries boolean,
  errors_function text,
  compiled_function text
)
language sql
immutable
parallel safe
set search_path = ''
as $$
  select k.kind, k.doc_key, k.keys, k.routes, k.branches, k.ends, k.retries, k.errors_function, k.compiled_function
  from (
    values
      (1, 'action', 'action', array['connection', 'with', 'next', 'retry', 'timeout'], array['next'], null::jsonb,
        false, true, 'step_action_errors', 'step_action_compiled'),
      (2, 'condition', 'if', array['then', 'else'], array['then', 'else'], '{"then": "then", "else": "else"}',
        false, false, 'step_condition_errors', null),
      (3, 'switch', 'switch', array['default'], array['default'], '{"default": "default"}',
        false, false, 'step_switch_errors', 'step_switch_compiled'),
      (4, 'set_variable', 'set', array['next'], array['next'], null, false, false, 'step_set_variable_errors', null),
      (5, 'transform', 'transform', array['next'], array['next'], null, false, false, 'step_transform_errors', null),
      (6, 'stop', 'stop', '{}', '{}', null, true, false, 'step_stop_errors', null),
      (7, 'emit', 'emit', array['next'], array['next'], null, false, false, 'step_emit_errors', null),
      (8, 'data', 'data', array['next'], array['next'], null, false, false, 'step_data_errors', 'step_data_compiled'),
      (9, 'delay', 'delay', array['next'], array['next'], null, false, false, 'step_delay_errors', null),
      (10, 'wait_for_event', 'wait_for_event', array['on_event', 'on_timeout'], array['on_event', 'on_timeout'],
        '{"event": "on_event", "timeout": "on_timeout"}', false, false, 'step_wait_for_event_errors', null),
      (11, 'wait_until', 'wait_until', array['on_met', 'on_timeout'], array['on_met', 'on_timeout'],
        '{"event": "on_met", "timeout": "on_timeout"}', false, false, 'step_wait_until_errors', null)
  ) as k (ord, kind, doc_key, keys, routes, branches, ends, retries, errors_function, compiled_function)
  order by k.ord;
$$;

-- One step: id, exactly one kind key, the keys that kind allows, its routing, its
-- on_error, then the kind's own checks (its errors_function).
drop function if exists conveyor.document_step_errors(jsonb, text, text[]);
create or replace function conveyor.document_step_errors(p_step jsonb, p_path text, p_step_ids jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_kind_keys text[] := array(select k.doc_key from conveyor.step_kinds() as k);
  v_kinds text[];
  v_kind record;
  v_allowed text[];
begin
  if jsonb_typeof(p_step) is distinct from 'object' then
    return next format('%s: expected a step object with "id" and one kind key (%s)', p_path,
      array_to_string(v_kind_keys, ', '));
    return;
  end if;

  if not p_step ? 'id' then
    return next format('%s.id: required key is missing', p_path);
  elsif jsonb_typeof(p_step -> 'id') <> 'string' or (p_step ->> 'id') !~ '^[a-z0-9][a-z0-9_-]*$' then
    return next format(
      '%s.id: invalid step id %s (lowercase letters, digits, _ and -, starting with a letter or digit)',
      p_path, (p_step -> 'id')::text
    );
  end if;

  v_kinds := array(select k from unnest(v_kind_keys) as k where p_step ? k);
  if cardinality(v_kinds) = 0 then
    return next format('%s: missing the step kind (one of: %s)', p_path, array_to_string(v_kind_keys, ', '));
    return;
  elsif cardinality(v_kinds) > 1 then
    return next format('%s: a step has exactly one kind, this one has %s', p_path, array_to_string(v_kinds, ', '));
    return;
  end if;
  select * into v_kind from conveyor.step_kinds() as k where k.doc_key = v_kinds[1];

  v_allowed := array['id', v_kind.doc_key, 'on_error'] || v_kind.keys;
  return query
  select format('%s.%s: unknown key for a "%s" step (expected one of: %s)', p_path, k.k, v_kind.doc_key,
    array_to_string(v_allowed, ', '))
  from jsonb_object_keys(p_step) as k (k)
  where k.k <> all(v_allowed)
  order by k.k;

  -- Routing: every target is null (end) or an existing step.
  return query
  select t.message
  from (
    select r.ord, conveyor.document_target_error(p_step -> r.k, p_path || '.' || r.k, p_step_ids) as message
    from unnest(v_kind.routes) with ordinality as r (k, ord)
    where p_step ? r.k
  ) as t
  where t.message is not null
  order by t.ord;

  if p_step ? 'on_error' then
    if jsonb_typeof(p_step -> 'on_error') = 'object' then
      if not (p_step -> 'on_error') ? 'goto' or (select count(*) from jsonb_object_keys(p_step -> 'on_error')) <> 1 then
        return next format('%s.on_error: expected {"goto": "<step id>"}', p_path);
      elsif jsonb_typeof(p_step -> 'on_error' -> 'goto') is distinct from 'string' then
        return next format('%s.on_error.goto: expected a step id', p_path);
      else
        return query
        select t.message
        from (select conveyor.document_target_error(p_step -> 'on_error' -> 'goto', p_path || '.on_error.goto',
          p_step_ids) as message) as t
        where t.message is not null;
      end if;
    elsif (p_step -> 'on_error') = '"retry"' and not v_kind.retries then
      return next format('%s.on_error: "retry" is only possible for %s steps', p_path, (
        select string_agg(k.doc_key, ', ') from conveyor.step_kinds() as k where k.retries
      ));
    elsif (p_step -> 'on_error') not in ('"fail"', '"continue"', '"retry"') then
      return next format(
        '%s.on_error: expected "fail", "continue", "retry" or {"goto": "<step id>"} (got %s)',
        p_path, (p_step -> 'on_error')::text
      );
    end if;
  end if;

  -- the kind's own checks (a publish-time call per step: dynamic SQL costs nothing here)
  return query execute format('select m from conveyor.%I($1, $2, $3) as m', v_kind.errors_function)
  using p_step, p_path, p_step_ids;
end;
$$;

-- The compiled step graph of a document: one row per step object, in document order.
-- Also used by validation (reachability), so it never raises on a malformed document;
-- the timeout is returned as text and parsed by publish.
--   kind: the first kind whose key the step has (null for a step with none).
--   config: the step without its id, routing, on_error, retry and timeout.
--   next_step: "next" if given, else the following step in document order (null: the end);
--              a kind that ends (stop) has none. For a kind with branches it is the
--              fall-through, used only when the step fails with on_error "continue".
--   branches: the kind's declared branches (see conveyor.step_kinds), each its route if
--             given, else the next step in document order (an explicit null ends the
--             execution), and what the kind's compiled_function adds (a switch's cases).
--   action_type: what the kind's compiled_function says (an action's type, data.<op>).
--   on_error: the step's, else the workflow's settings.on_error, else 'fail'.
--   retry_policy: defaults || (the step's retry, else the workflow's settings.retry);
--              on_error "retry" without any policy means 3 attempts.
drop function if exists conveyor.compile_steps(jsonb);
create or replace function conveyor.compile_steps(p_document jsonb)
returns table (
  step_position integer,
  step_id text,
  kind text,
  action_type text,
  config jsonb,
  next_step text,
  branches jsonb,
  on_error text,
  error_step text,
  retry_policy jsonb,
  timeout_text text
)
language plpgsql
stable
set search_path = ''
as $$
declare
  v_routing text[] := array(select distinct unnest(k.routes) from conveyor.step_kinds() as k);
  v_step record;
  v_kind record;
  v_extra jsonb;
  v_retry jsonb;
begin
  for v_step in
    select (e.n - 1)::integer as pos, e.step, lead(e.step ->> 'id') over (order by e.n) as fall_through
    from jsonb_array_elements(
      case when jsonb_typeof(p_document -> 'steps') = 'array' then p_document -> 'steps' else '[]' end
    ) with ordinality as e (step, n)
    order by e.n
  loop
    continue when jsonb_typeof(v_step.step) <> 'object';
    select * into v_kind from conveyor.step_kinds() as k where v_step.step ? k.doc_key limit 1;
    v_extra := '{}';
    if v_kind.compiled_function is not null then
      execute format('select conveyor.%I($1, $2)', v_kind.compiled_function)
      into v_extra using v_step.step, v_step.fall_through;
    end if;

    step_position := v_step.pos;
    step_id := v_step.step ->> 'id';
    kind := v_kind.kind;
    action_type := v_extra ->> 'action_type';
    config := v_step.step - (array['id', 'on_error', 'retry', 'timeout'] || v_routing || array['next']);
    next_step := case
      when v_kind.ends then null
      when v_step.step ? 'next' then v_step.step ->> 'next'
      else v_step.fall_through
    end;
    branches := case when v_kind.branches is not null then (
      select coalesce(jsonb_object_agg(
        b.key,
        case when v_step.step ? (b.value #>> '{}') then v_step.step ->> (b.value #>> '{}') else v_step.fall_through end
      ), '{}')
      from jsonb_each(v_kind.branches) as b
    ) || coalesce(v_extra -> 'branches', '{}') end;
    on_error := case
      when jsonb_typeof(v_step.step -> 'on_error') = 'object' then 'goto'
      when v_step.step ? 'on_error' then v_step.step ->> 'on_error'
      else coalesce(p_document -> 'settings' ->> 'on_error', 'fail')
    end;
    error_step := case when on_error = 'goto' then v_step.step -> 'on_error' ->> 'goto' end;
    v_retry := coalesce(
      case when jsonb_typeof(v_step.step -> 'retry') = 'object' then v_step.step -> 'retry' end,
      case when jsonb_typeof(p_document -> 'settings' -> 'retry') = 'object' then p_document -> 'settings' -> 'retry' end
    );
    retry_policy := '{"attempts": 1, "backoff": "exponential", "initial": "30s", "max": "1h", "jitter": true}'::jsonb
      || case when on_error = 'retry' and not coalesce(v_retry ? 'attempts', false) then '{"attempts": 3}'::jsonb
        else '{}'::jsonb end
      || coalesce(v_retry, '{}');
    timeout_text := v_step.step ->> 'timeout';
    return next;
  end loop;
end;
$$;

revoke all on function conveyor.step_kinds() from public;
