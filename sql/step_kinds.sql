-- Step kinds: the one declaration of what kinds of steps a workflow may have, read by
-- validation (conveyor.document_step_errors) and compilation (conveyor.compile_steps).
-- Each kind's own checks and compile additions live in its file under sql/steps/; adding
-- a kind means adding its file and its row below (docs/architecture.md, "Adding things").

-- One row per kind, in the order error messages list them:
--   kind: the compiled name (workflow_steps.kind); doc_key: the key that names the kind in
--   a document; spec_key: the key that holds its spec (null: the spec is the step itself,
--   as an action's `with`, `connection` ... are); keys: the other keys the step may have
--   besides id, doc_key and on_error, in the order messages list them; routes: those of
--   keys that name a step to go to (a step id, or null for the end); branches: the
--   compiled branches, {"<branch>": "<route>"} (null: the kind goes on to its next step;
--   with branches, next_step is only the fall-through of on_error "continue"); ends: the
--   kind has no next step; retries: on_error "retry" is possible; renders: its spec's
--   templates are rendered before it runs (the step's input); then the names of its
--   functions in its file under sql/steps/:
--   errors_function  (p_step jsonb, p_path text, p_step_ids jsonb) returns setof text: the
--                    kind's own problems in a document;
--   compiled_function (p_step jsonb, p_fall_through text) returns jsonb, or null: what
--                    compiling adds ({"action_type", "branches"});
--   code_function    () returns jsonb: how it runs, {"run", "prepare"?, "decision"?}
--                    (conveyor.generate_interpreter);
--   bodies_function  (p_step jsonb) returns table (body text, path text, steps jsonb, item
--                    boolean), for a kind whose step holds step lists of its own (a
--                    parallel's branches, a for_each's body): each list, the path from
--                    the step to it, and whether its steps see {{item}} / {{index}}
--                    (conveyor.document_step_lists).
drop function if exists conveyor.step_kinds();
create or replace function conveyor.step_kinds()
returns table (
  kind text,
  doc_key text,
  spec_key text,
  keys text[],
  routes text[],
  branches jsonb,
  ends boolean,
  retries boolean,
  renders boolean,
  errors_function text,
  compiled_function text,
  code_function text,
  bodies_function text
)
language sql
immutable
parallel safe
set search_path = ''
as $$
  select
    k.kind, k.doc_key, k.spec_key, k.keys, k.routes, k.branches, k.ends, k.retries, k.renders,
    'step_' || k.kind || '_errors', k.compiled_function, 'step_' || k.kind || '_code',
    case when b.kind is not null then 'step_' || k.kind || '_bodies' end
  from (
    values
      (1, 'action', 'action', null, array['connection', 'with', 'next', 'retry', 'timeout', 'tags', 'list_unsubscribe'],
        array['next'],
        null::jsonb, false, true, true, 'step_action_compiled'),
      (2, 'condition', 'if', 'if', array['then', 'else'], array['then', 'else'], '{"then": "then", "else": "else"}',
        false, false, false, null),
      -- (a switch's spec is the step itself: its cases are compiled into its branches)
      (3, 'switch', 'switch', null, array['default'], array['default'], '{"default": "default"}',
        false, false, false, 'step_switch_compiled'),
      (4, 'set_variable', 'set', 'set', array['next'], array['next'], null, false, false, true, null),
      (5, 'transform', 'transform', 'transform', array['next'], array['next'], null, false, false, false, null),
      (6, 'stop', 'stop', 'stop', '{}', '{}', null, true, false, true, null),
      (7, 'emit', 'emit', 'emit', array['next'], array['next'], null, false, false, true, null),
      (8, 'data', 'data', 'data', array['next'], array['next'], null, false, false, true, 'step_data_compiled'),
      (9, 'delay', 'delay', 'delay', array['next'], array['next'], null, false, false, true, null),
      (10, 'wait_for_event', 'wait_for_event', 'wait_for_event', array['on_event', 'on_timeout'],
        array['on_event', 'on_timeout'], '{"event": "on_event", "timeout": "on_timeout"}', false, false, true, null),
      (11, 'wait_until', 'wait_until', 'wait_until', array['on_met', 'on_timeout'], array['on_met', 'on_timeout'],
        '{"event": "on_met", "timeout": "on_timeout"}', false, false, true, null),
      -- (a split's weighted branches are compiled into its branches: split[<i>] -> goto)
      (12, 'split', 'split', 'split', '{}', '{}', '{}', false, false, false, 'step_split_compiled'),
      -- fan-out (sql/fanout.sql): each renders only its own fields, not its bodies' steps
      (13, 'parallel', 'parallel', 'parallel', array['next'], array['next'], null, false, false, true, null),
      (14, 'for_each', 'for_each', 'for_each', array['next'], array['next'], null, false, false, true, null),
      (15, 'call', 'call', 'call', array['next'], array['next'], null, false, false, true, null),
      (16, 'notify', 'notify', 'notify', array['next'], array['next'], null, false, false, true, null),
      -- people approving (sql/approvals.sql): the request's outcome routes
      (17, 'approval', 'approval', 'approval', array['on_approved', 'on_rejected', 'on_expired'],
        array['on_approved', 'on_rejected', 'on_expired'],
        '{"approved": "on_approved", "rejected": "on_rejected", "expired": "on_expired"}', false, false, true, null),
      -- generated campaign workflows (sql/campaigns.sql): send slots and an enrollment's end
      (18, 'campaign', 'campaign', 'campaign', array['next'], array['next'], null, false, false, true, null),
      -- a workflow enrolling a row in a campaign (sql/campaigns.sql)
      (19, 'enroll', 'enroll', 'enroll', array['next'], array['next'], null, false, false, true, null)
  ) as k (ord, kind, doc_key, spec_key, keys, routes, branches, ends, retries, renders, compiled_function)
  -- the kinds whose steps hold step lists of their own (bodies_function)
  left join (values ('parallel'), ('for_each')) as b (kind) on b.kind = k.kind
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

-- Every step list of a document: the top-level "steps" first, then the lists its steps
-- hold (a parallel's branches, a for_each's body: the kinds' bodies_function), depth
-- first in document order.
--   list_path: where the list is ("steps", "steps[2].parallel.branches.a");
--   owner_step: the step holding it (null for the top level), body: its name there;
--   in_item: its steps see {{item}} and {{index}} (inside a for_each body, at any depth);
--   nesting: how many fan-out steps hold it (0 for the top level).
-- Never raises on a malformed document (validation uses it): a body that is not an array
-- is left out here (its kind's checks report it). Bounded by the document's size limits.
create or replace function conveyor.document_step_lists(p_document jsonb)
returns table (
  ord integer,
  list_path text,
  steps jsonb,
  owner_step text,
  body text,
  in_item boolean,
  nesting integer
)
language plpgsql
stable
set search_path = ''
as $$
declare
  v_todo jsonb;  -- lists still to return: [path, steps, owner, body, in_item, nesting]
  v_entry jsonb;
  v_inner jsonb;
  v_step record;
  v_fn text;
  v_name text;
  v_path text;
  v_steps jsonb;
  v_item boolean;
  -- {"<doc key>": "<bodies_function>"} of the kinds whose steps hold step lists
  v_holders jsonb := (
    select coalesce(jsonb_object_agg(k.doc_key, k.bodies_function), '{}')
    from conveyor.step_kinds() as k
    where k.bodies_function is not null
  );
begin
  if jsonb_typeof(p_document -> 'steps') is distinct from 'array' then
    return;
  end if;
  v_todo := jsonb_build_array(jsonb_build_array('steps', p_document -> 'steps', null, null, false, 0));
  ord := 0;
  while jsonb_array_length(v_todo) > 0 loop
    v_entry := v_todo -> 0;
    v_todo := v_todo - 0;
    ord := ord + 1;
    list_path := v_entry ->> 0;
    steps := v_entry -> 1;
    owner_step := v_entry ->> 2;
    body := v_entry ->> 3;
    in_item := (v_entry ->> 4)::boolean;
    nesting := (v_entry ->> 5)::integer;
    return next;

    v_inner := '[]';
    for v_step in
      select e.step, (e.n - 1)::integer as idx
      from jsonb_array_elements(steps) with ordinality as e (step, n)
      where jsonb_typeof(e.step) = 'object'
      order by e.n
    loop
      v_fn := (select v_holders ->> k.k from jsonb_object_keys(v_holders) as k (k) where v_step.step ? k.k limit 1);
      continue when v_fn is null;
      for v_name, v_path, v_steps, v_item in
        execute format('select b.body, b.path, b.steps, b.item from conveyor.%I($1) as b', v_fn) using v_step.step
      loop
        continue when jsonb_typeof(v_steps) is distinct from 'array';
        v_inner := v_inner || jsonb_build_array(jsonb_build_array(
          format('%s[%s]%s', list_path, v_step.idx, v_path), v_steps, v_step.step ->> 'id', v_name,
          in_item or v_item, nesting + 1
        ));
      end loop;
    end loop;
    v_todo := v_inner || v_todo;
  end loop;
end;
$$;

-- The literal names (no template) a document's steps of one kind give in one field, as
-- a call's "workflow" or an enroll's "campaign": publish checks them against what the
-- tenant has (conveyor.document_call_errors, document_enroll_errors ...). path: the
-- step's place ("steps[2]"), in document order.
create or replace function conveyor.document_literal_names(p_document jsonb, p_doc_key text, p_field text)
returns table (path text, name text)
language sql
stable
set search_path = ''
as $$
  select format('%s[%s]', l.list_path, e.n - 1), e.step -> p_doc_key ->> p_field
  from conveyor.document_step_lists(p_document) as l
  cross join lateral jsonb_array_elements(l.steps) with ordinality as e (step, n)
  where jsonb_typeof(e.step -> p_doc_key -> p_field) = 'string'
    and strpos(e.step -> p_doc_key ->> p_field, '{{') = 0
  order by l.ord, e.n;
$$;

-- The compiled step graph of a document: one row per step object of every step list
-- (conveyor.document_step_lists), the top level first, in document order.
-- Also used by validation (reachability), so it never raises on a malformed document;
-- the timeout is returned as text and parsed by publish.
--   kind: the first kind whose key the step has (null for a step with none).
--   config: the step without its id, routing, on_error, retry and timeout.
--   list_path: the step's list (a nested list's steps run in child executions, sql/fanout.sql);
--   next_step: "next" if given, else the following step in its list (null: the end);
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
  timeout_text text,
  list_path text
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
  v_position integer := -1;
begin
  for v_step in
    select l.list_path, e.step, lead(e.step ->> 'id') over (partition by l.ord order by e.n) as fall_through
    from conveyor.document_step_lists(p_document) as l
    cross join lateral jsonb_array_elements(l.steps) with ordinality as e (step, n)
    order by l.ord, e.n
  loop
    v_position := v_position + 1;
    continue when jsonb_typeof(v_step.step) <> 'object';
    select * into v_kind from conveyor.step_kinds() as k where v_step.step ? k.doc_key limit 1;
    v_extra := '{}';
    if v_kind.compiled_function is not null then
      execute format('select conveyor.%I($1, $2)', v_kind.compiled_function)
      into v_extra using v_step.step, v_step.fall_through;
    end if;

    step_position := v_position;
    list_path := v_step.list_path;
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

-- What each kind's code (its code_function) may use in conveyor.interpret_batch:
--   read:  v_step (conveyor.workflow_steps: kind, config, next_step, branches, action_type,
--          timeout ...), v_spec (the spec: conveyor.step_spec), v_exec (the execution:
--          trigger, step_outputs, vars ...), v_ctx (the context object, when the kind needs
--          it), v_condition (a condition's plan), v_where ('step "<id>"', for errors), p_now,
--          v_dry (a dry run);
--   prepare (once per batch per step) sets v_steps_render[v_step_pos] (a render plan, or
--          leaves it null), v_steps_condition[v_step_pos], v_steps_need_ctx[v_step_pos]; a
--          kind that renders and has no prepare gets its spec's plan, and the context object
--          when its templates need one;
--   run sets v_input (what the step run records; rendered already for a kind that renders),
--          v_output, v_next (preset to the step's next_step), v_wait ('action' | 'delay' |
--          'event' | 'children' | 'approval': the execution stops here), v_resume (when it
--          is due again), v_new_vars (merged into the execution's variables); it may use
--          v_target, v_case and
--          v_max_action_timeout as scratch. An error it raises fails the step (its
--          subtransaction), which then follows its on_error;
--   decision: a text expression over p_input, p_output, p_action_type (conveyor.step_decision).
-- Puts the step kinds' code in place: conveyor.step_spec and conveyor.step_decision are
-- written from the declaration, and interpret_batch's two marked regions ("@step-kinds
-- prepare" and "@step-kinds run") from each kind's code. Run by sql/interpreter.sql after it
-- defines interpret_batch, on every migrate; the hot path then runs static code (a call
-- per step to a kind's own function would cost ~5 us each).
create or replace function conveyor.generate_interpreter()
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_kind record;
  v_code jsonb;
  v_spec text := '';
  v_decision text := '';
  v_prepare text := '';
  v_run text := '';
  v_def text;
  v_from integer;
  v_to integer;
  v_marker text;
  v_target constant text := 'conveyor.interpret_batch(conveyor.executions[], timestamptz, boolean)';
begin
  for v_kind in select * from conveyor.step_kinds() loop
    execute format('select conveyor.%I()', v_kind.code_function) into v_code;
    if v_code ->> 'run' is null then
      raise exception 'step kind %: %() gives no "run" code', v_kind.kind, v_kind.code_function;
    end if;
    v_spec := v_spec || format(E'\n    when %L then %s', v_kind.kind,
      case when v_kind.spec_key is null then 'p_config' else format('coalesce(p_config -> %L, p_config)', v_kind.spec_key) end);
    v_decision := v_decision || format(E'\n    when %L then %s', v_kind.kind, coalesce(v_code ->> 'decision', '''ran'''));
    v_prepare := v_prepare || format(E'\n          when %L then', v_kind.kind) || regexp_replace(
      E'\n' || coalesce(btrim(v_code ->> 'prepare', E'\n'), case when v_kind.renders then format(
        E'v_steps_render[v_step_pos] := conveyor.render_plan(coalesce(v_spec, %L), %s, false);\n'
        || 'v_steps_need_ctx[v_step_pos] := coalesce((v_steps_render[v_step_pos] ->> %L)::boolean, false);',
        '{}', format('''step "'' || v_step.step_id || ''".%s''', v_kind.doc_key), 'context'
      ) else 'v_steps_need_ctx[v_step_pos] := false;' end),
      E'\n', E'\n            ', 'g'
    );
    v_run := v_run || format(E'\n          when %L then', v_kind.kind)
      || regexp_replace(E'\n' || btrim(v_code ->> 'run', E'\n'), E'\n', E'\n            ', 'g');
  end loop;

  execute format($f$
    create or replace function conveyor.step_spec(p_kind text, p_config jsonb) returns jsonb
    language plpgsql immutable parallel safe set search_path = ''
    as $body$
    begin
      -- written by conveyor.generate_interpreter from conveyor.step_kinds()
      return case p_kind%s
        else p_config
      end;
    end;
    $body$
  $f$, v_spec);
  execute format($f$
    create or replace function conveyor.step_decision(p_kind text, p_input jsonb, p_output jsonb, p_action_type text)
    returns text
    language plpgsql stable parallel safe set search_path = ''
    as $body$
    begin
      -- written by conveyor.generate_interpreter from the step kinds' code
      return case p_kind%s
        else 'ran'
      end;
    end;
    $body$
  $f$, v_decision);

  v_def := pg_catalog.pg_get_functiondef(v_target::regprocedure);
  foreach v_marker in array array['prepare', 'run'] loop
    v_from := strpos(v_def, '-- @step-kinds ' || v_marker);
    v_to := strpos(substr(v_def, v_from), '-- @end');
    if v_from = 0 or v_to = 0 then
      raise exception '%: the region "-- @step-kinds %" ... "-- @end" is missing', v_target, v_marker;
    end if;
    v_def := substr(v_def, 1, v_from - 1)
      || '-- step kinds (sql/steps/), written by conveyor.generate_interpreter'
      || case v_marker when 'prepare' then v_prepare else v_run end
      || E'\n          else\n            '
      || case v_marker
        when 'prepare' then 'v_steps_need_ctx[v_step_pos] := false;'
        else 'raise exception using errcode = ''22023'', message = format(''%s: unknown step kind %s'', v_where, v_step.kind);'
      end
      || substr(v_def, v_from + v_to - 1 + length('-- @end'));
  end loop;
  execute v_def;
end;
$$;

revoke all on function conveyor.generate_interpreter() from public;
