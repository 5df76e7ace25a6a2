-- The step interpreter: runs an execution's internal steps inside Postgres, following the
-- compiled graph (workflow_steps.next_step / branches) by primary-key lookups, until the
-- execution reaches an external action (queued to pgmq), a delay or wait, or its end.
--
-- Every step runs in its own exception block (a subtransaction): a failing step leaves no
-- half-applied effects, records a failed step_run and then follows its on_error policy.
-- Executions, step_runs and stats change in the transaction of their cause (dispatch,
-- write-back, resume), so a crash at any instant loses nothing.
--
-- Performance (advance_executions): a batch of executions is interpreted in one call; the
-- graph rows are read once per batch, the template context is built once per execution
-- (steps / vars are refreshed only before steps whose config names them), and step_runs,
-- executions and completed-execution stats are written with one set-based statement each
-- at the end of the batch. Only steps with side effects (emit, data) write while running,
-- inside their own subtransaction. A pure step's exception block costs no XID.
--
-- Dry-run mode (transaction-local setting conveyor.dry_run = on, set by conveyor.dry_run):
-- actions are recorded as "would send" and continue with a null output, delays continue
-- without waiting, waits for events follow their timeout branch.

-- The kind-specific part of a compiled step's config (conveyor.step_spec: publish may store
-- either the whole step document or only the part under the kind's key) and how each kind
-- runs are written from the step kinds (sql/step_kinds.sql, sql/steps/) by
-- conveyor.generate_interpreter, at the end of this file. How executions are handed to it
-- (advance_executions, run_executions) and the containment of a batch that fails
-- (interpret_executions) are sql/interpreter_runs.sql.

-- Interprets a batch of executions (see the top of this file); conveyor.interpret_executions
-- (sql/interpreter_runs.sql) is its caller.
create or replace function conveyor.interpret_batch(
  p_execs conveyor.executions[],
  p_now timestamptz,
  p_new boolean
)
returns void
language plpgsql
security definer
set search_path = ''
-- The set-based statements over unnest(array) get default row estimates; JIT would cost
-- far more than the statements.
set jit = off
as $$
declare
  v_exec conveyor.executions;
  v_logs conveyor.execution_logs[] := '{}';
  v_step conveyor.workflow_steps;
  v_runs conveyor.step_runs[] := '{}';
  v_nruns integer := 0;
  v_messages jsonb[] := '{}';
  v_nmessages integer := 0;
  v_execs conveyor.executions[] := '{}';
  v_nexecs integer := 0;
  v_finals text[] := '{}';
  v_final_errors jsonb[] := '{}';
  v_final_ids bigint[] := '{}';
  -- caches for the batch: graph rows by "workflow:version:step", max_steps by
  -- "workflow:version", the tenant object by tenant id
  v_steps conveyor.workflow_steps[] := '{}';
  v_steps_use_state boolean[] := '{}';
  -- each cached step's spec (conveyor.step_spec), its render plan (conveyor.render_plan of
  -- what its kind renders), its condition's plan (conveyor.condition_plan) and whether it
  -- needs the whole context object
  v_steps_spec jsonb[] := '{}';
  v_steps_render jsonb[] := '{}';
  v_steps_condition jsonb[] := '{}';
  v_steps_need_ctx boolean[] := '{}';
  v_render jsonb;
  v_condition jsonb;
  v_needs_ctx boolean;
  v_step_ctx jsonb;
  v_uses_state boolean;
  v_ctx_stale boolean;
  v_step_index jsonb := '{}';
  v_step_key text;
  v_step_pos integer;
  v_max_steps_by jsonb := '{}';
  v_tenants jsonb := '{}';
  v_visits jsonb;
  v_now_text text := p_now::text;
  v_fresh boolean;
  -- for executions that ran steps before this call: the latest visit of the step each
  -- resumes at, read for the whole batch at once ({"<execution_id>": visit, 0 for none})
  v_resume_visits jsonb := '{}';
  v_max_steps integer;
  v_tenant jsonb;
  v_dry boolean := coalesce(pg_catalog.current_setting('conveyor.dry_run', true), '') = 'on';
  -- the execution state budget: the bytes of an execution's step outputs and variables
  v_max_state bigint := conveyor.limit_setting('max_execution_state_bytes', 8388608);
  v_state_bytes bigint;
  -- conveyor.max_action_timeout(), read when the batch's first action step runs
  v_max_action_timeout interval;
  v_ctx jsonb;
  v_spec jsonb;
  v_where text;
  v_visit integer;
  v_started timestamptz;
  v_input jsonb;
  v_output jsonb;
  v_next text;
  v_wait text;
  v_resume timestamptz;
  v_new_vars jsonb;
  v_final text;
  v_error jsonb;
  v_case integer;
  v_target text;
  v_event_id bigint;
  v_key text;
  v_msg text;
  v_detail text;
  v_hint text;
  v_state text;
  v_i integer;
  -- fan-out (sql/fanout.sql): the children a step started, to run once the batch is
  -- written; the children that completed here, to count in their fan-outs; whether the
  -- execution is a child whose join was decided without it (it ends cancelled)
  v_spawned bigint[] := '{}';
  v_done_children bigint[] := '{}';
  -- the concurrency slots of executions that completed here (sql/flow_control.sql)
  v_freed_workflows bigint[] := '{}';
  v_freed_keys text[] := '{}';
  v_orphan boolean;
  -- a branch's or an item's fan-out: what it sees of its parent (context) and the keys of
  -- the parent's step outputs, which it does not store
  v_fanout conveyor.fanouts;
  v_fanout_trigger jsonb;
  v_fanout_outputs jsonb;
begin
  if coalesce(pg_catalog.cardinality(p_execs), 0) = 0 then
    return;
  end if;
  if not p_new then
    -- one statement for the batch rather than one query per resumed execution
    select coalesce(pg_catalog.jsonb_object_agg(x.execution_id::text, coalesce(m.visit, 0)), '{}') into v_resume_visits
    from unnest(p_execs) as x
    cross join lateral (
      select max(r.visit) as visit
      from conveyor.step_runs as r
      where r.execution_id = x.execution_id and r.step_id = x.current_step
    ) as m
    where x.steps_run > 0 and x.current_step is not null;
  end if;
  foreach v_exec in array p_execs loop
    v_key := v_exec.workflow_id || ':' || v_exec.version;
    if v_max_steps_by ? v_key then
      v_max_steps := (v_max_steps_by ->> v_key)::integer;
    else
      select v.max_steps into v_max_steps
      from conveyor.workflow_versions as v
      where v.workflow_id = v_exec.workflow_id and v.version = v_exec.version;
      v_max_steps_by := v_max_steps_by || jsonb_build_object(v_key, v_max_steps);
    end if;
    v_tenant := v_tenants -> v_exec.tenant_id;
    if v_tenant is null then
      select jsonb_build_object('id', t.tenant_id, 'name', t.name, 'timezone', t.timezone) into v_tenant
      from conveyor.tenants as t
      where t.tenant_id = v_exec.tenant_id;
      v_tenants := v_tenants || jsonb_build_object(v_exec.tenant_id, v_tenant);
    end if;

    -- (the 'started' counter of workflow_stats is dispatch's: conveyor.record_started)
    v_exec.started_at := coalesce(v_exec.started_at, now());
    v_exec.status := 'running';
    -- the context object is built when a step first needs it (below)
    v_ctx := null;
    v_ctx_stale := false;
    v_final := null;
    v_error := null;
    -- the latest visit of each step met so far: of the step a resumed execution starts at,
    -- from the batch's read above; others are looked up when met (an execution that has
    -- run no step yet has no earlier step_runs)
    v_visits := case
      when v_resume_visits ? v_exec.execution_id::text
        then jsonb_build_object(v_exec.current_step, v_resume_visits -> v_exec.execution_id::text)
      else '{}'
    end;
    v_orphan := false;
    if v_exec.fanout_id is null then
      v_fanout := null;
    else
      -- read once per batch and fan-out (its children in a batch share it; only this
      -- transaction could change it, and it does so after the batch)
      if v_fanout.fanout_id is distinct from v_exec.fanout_id then
        select * into v_fanout from conveyor.fanouts as f where f.fanout_id = v_exec.fanout_id;
        v_fanout_trigger := v_fanout.context -> 'trigger';
        v_fanout_outputs := coalesce(v_fanout.context -> 'step_outputs', '{}');
      end if;
      v_orphan := v_fanout.state is distinct from 'open';
      if v_exec.item is not null and v_fanout.fanout_id is not null then
        -- the parent's trigger and step outputs, kept once in the fan-out (sql/fanout.sql)
        v_exec.trigger := v_fanout_trigger;
        v_exec.step_outputs := v_fanout_outputs || v_exec.step_outputs;
      end if;
    end if;
    v_fresh := v_exec.steps_run = 0;
    v_state_bytes := pg_catalog.pg_column_size(v_exec.step_outputs) + pg_catalog.pg_column_size(v_exec.vars);

    loop
      if v_orphan then
        v_final := 'cancelled';
        v_error := jsonb_build_object(
          'step', v_exec.current_step,
          'message', format('not needed: the join of parent execution %s was decided without it', v_exec.parent_execution_id)
        );
        exit;
      end if;
      if v_exec.current_step is null then
        v_final := 'completed';
        exit;
      end if;
      if v_state_bytes > v_max_state then
        v_final := 'failed';
        v_error := jsonb_build_object(
          'step', v_exec.current_step,
          'message', format(
            'execution state budget spent: the step outputs and variables of execution %s take %s bytes,'
            ' over the limit of %s (setting conveyor.max_execution_state_bytes); stopped before step "%s"',
            v_exec.execution_id, v_state_bytes, v_max_state, v_exec.current_step
          ),
          'detail', 'the limit is the setting conveyor.max_execution_state_bytes'
        );
        exit;
      end if;
      if v_exec.steps_run >= v_max_steps then
        v_final := 'failed';
        v_error := jsonb_build_object(
          'step', v_exec.current_step,
          'message', format(
            'step budget exceeded: %s steps run (max_steps %s of workflow %s version %s); stopped before step "%s"',
            v_exec.steps_run, v_max_steps, v_exec.workflow_id, v_exec.version, v_exec.current_step
          ),
          'detail', 'a loop in the step graph? raise settings.max_steps if the workflow really needs more steps'
        );
        exit;
      end if;
      v_step_key := v_key || ':' || v_exec.current_step;
      v_step_pos := (v_step_index ->> v_step_key)::integer;
      if v_step_pos is not null then
        v_step := v_steps[v_step_pos];
        v_uses_state := v_steps_use_state[v_step_pos];
      else
        select s.* into v_step
        from conveyor.workflow_steps as s
        where s.workflow_id = v_exec.workflow_id and s.version = v_exec.version and s.step_id = v_exec.current_step;
        if not found then
          v_final := 'failed';
          v_error := jsonb_build_object(
            'step', v_exec.current_step,
            'message', format(
              'step "%s" does not exist in workflow %s version %s', v_exec.current_step, v_exec.workflow_id,
              v_exec.version
            )
          );
          exit;
        end if;
        v_step_pos := pg_catalog.cardinality(v_steps) + 1;
        v_steps[v_step_pos] := v_step;
        -- whether the step can read {{steps...}} / {{vars...}} (every reference names its root)
        v_uses_state := pg_catalog.strpos(coalesce(v_step.config::text, '') || coalesce(v_step.branches::text, ''), 'steps') > 0
          or pg_catalog.strpos(coalesce(v_step.config::text, '') || coalesce(v_step.branches::text, ''), 'vars') > 0;
        v_steps_use_state[v_step_pos] := v_uses_state;
        v_spec := conveyor.step_spec(v_step.kind, v_step.config);
        v_steps_spec[v_step_pos] := v_spec;
        -- what the step renders (its render plan), its condition's plan, whether it needs
        -- the context object: its kind's preparation
        case v_step.kind
          -- @step-kinds prepare
          when '' then null;
          else
            raise exception 'conveyor.generate_interpreter has not run';
          -- @end
        end case;
        v_step_index := v_step_index || jsonb_build_object(v_step_key, v_step_pos);
      end if;
      v_spec := v_steps_spec[v_step_pos];
      v_render := v_steps_render[v_step_pos];
      v_condition := v_steps_condition[v_step_pos];
      v_needs_ctx := v_steps_need_ctx[v_step_pos];

      v_exec.steps_run := v_exec.steps_run + 1;
      v_visit := (v_visits ->> v_step.step_id)::integer;
      if v_visit is null and not v_fresh then
        select max(r.visit) into v_visit
        from conveyor.step_runs as r
        where r.execution_id = v_exec.execution_id and r.step_id = v_step.step_id;
      end if;
      v_visit := coalesce(v_visit, 0) + 1;
      v_visits := v_visits || jsonb_build_object(v_step.step_id, v_visit);
      -- The context object, for the steps that need it: a step whose templates and
      -- condition read only trigger, steps or vars reads them from the execution instead
      -- (building the object copies all three). Once built, only steps and vars change
      -- between steps, and only steps that refer to them need them current; || copies the
      -- other members as they are.
      if v_needs_ctx then
        if v_ctx is null then
          v_ctx := jsonb_build_object(
            'trigger', v_exec.trigger,
            'steps', v_exec.step_outputs,
            'vars', v_exec.vars,
            'execution', jsonb_build_object(
              'id', v_exec.execution_id, 'workflow_id', v_exec.workflow_id, 'version', v_exec.version,
              'started_at', v_exec.started_at
            ),
            'tenant', v_tenant,
            'now', v_now_text
          );
          if v_exec.item is not null then
            -- a for_each item's {{item}} and {{index}} (sql/fanout.sql)
            v_ctx := v_ctx || jsonb_build_object('item', v_exec.item -> 'item', 'index', v_exec.item -> 'index');
          end if;
          v_ctx_stale := false;
        elsif v_uses_state and v_ctx_stale then
          v_ctx := v_ctx || jsonb_build_object('steps', v_exec.step_outputs, 'vars', v_exec.vars);
          v_ctx_stale := false;
        end if;
      end if;
      -- (render_planned reads the execution's parts when it is not given a context)
      v_step_ctx := case when v_needs_ctx then v_ctx end;
      v_where := 'step "' || v_step.step_id || '"';
      v_started := pg_catalog.clock_timestamp();
      v_input := null;
      v_output := null;
      v_next := v_step.next_step;
      v_wait := null;
      v_resume := null;
      v_new_vars := null;
      v_error := null;

      begin
        -- the kinds that render: their input, by the step's plan
        if v_render is not null then
          v_input := conveyor.render_planned(v_render, v_step_ctx, v_exec.trigger, v_exec.step_outputs, v_exec.vars);
        end if;
        -- the kind's run code
        case v_step.kind
          -- @step-kinds run
          when '' then null;
          else
            raise exception 'conveyor.generate_interpreter has not run';
          -- @end
        end case;
      exception when others then
        get stacked diagnostics
          v_msg = message_text, v_detail = pg_exception_detail, v_hint = pg_exception_hint, v_state = returned_sqlstate;
        v_error := jsonb_build_object(
          'step', v_step.step_id, 'message', v_msg, 'detail', nullif(v_detail, ''), 'hint', nullif(v_hint, ''),
          'sqlstate', v_state
        );
      end;

      -- step_runs rows are built positionally (one statement each: this is the hot path):
      -- (step_run_id, execution_id, tenant_id, step_id, visit, attempt, status, input, output,
      -- error, idempotency_key, msg_id, next_step, started_at, finished_at)
      if v_error is not null then
        -- The step failed; its effects were rolled back with its subtransaction.
        -- 'retry' is for external actions: an internal step that fails is final like 'fail'.
        v_next := case v_step.on_error when 'continue' then v_step.next_step when 'goto' then v_step.error_step end;
        v_nruns := v_nruns + 1;
        v_runs[v_nruns] := row(
          pg_catalog.nextval('conveyor.step_runs_step_run_id_seq'), v_exec.execution_id, v_exec.tenant_id,
          v_step.step_id, v_visit, 1, 'failed', v_input, null,
          v_error, null, null, v_next, v_started, pg_catalog.clock_timestamp()
        )::conveyor.step_runs;
        if v_step.on_error in ('continue', 'goto') then
          -- (log_id, tenant_id, execution_id, workflow_id, event_id, step_id, level, message,
          -- details, logged_at), written after the executions
          v_logs := v_logs || row(
            null, v_exec.tenant_id, v_exec.execution_id, v_exec.workflow_id, null, v_step.step_id, 'warning',
            format(
              'step "%s" failed (%s); on_error %s → %s', v_step.step_id, v_error ->> 'message', v_step.on_error,
              coalesce('"' || v_next || '"', 'end')
            ),
            v_error, now()
          )::conveyor.execution_logs;
          v_exec.step_outputs := v_exec.step_outputs
            || jsonb_build_object(v_step.step_id, jsonb_build_object('output', null, 'error', v_error));
          v_state_bytes := pg_catalog.pg_column_size(v_exec.step_outputs) + pg_catalog.pg_column_size(v_exec.vars);
          v_ctx_stale := true;
          v_exec.current_step := v_next;
          continue;
        end if;
        v_final := 'failed';
        exit;
      end if;

      if v_wait = 'action' and not v_dry then
        v_nruns := v_nruns + 1;
        v_runs[v_nruns] := row(
          pg_catalog.nextval('conveyor.step_runs_step_run_id_seq'), v_exec.execution_id, v_exec.tenant_id,
          v_step.step_id, v_visit, 1, 'queued', v_input, null,
          null, format('%s:%s:%s', v_exec.execution_id, v_step.step_id, v_visit), null, null, v_started, null
        )::conveyor.step_runs;
        -- sent with the other executions' at the end, the step run with its msg_id
        v_nmessages := v_nmessages + 1;
        v_messages[v_nmessages] := conveyor.action_message(v_runs[v_nruns], v_exec.workflow_id, v_step);
        v_exec.status := 'waiting';
        v_exec.wait_kind := 'action';
        v_exec.resume_at := null;
        exit;
      end if;

      if v_wait in ('delay', 'event', 'children', 'approval') and not v_dry then
        v_nruns := v_nruns + 1;
        v_runs[v_nruns] := row(
          pg_catalog.nextval('conveyor.step_runs_step_run_id_seq'), v_exec.execution_id, v_exec.tenant_id,
          v_step.step_id, v_visit, 1, 'running', v_input, v_output,
          null, null, null, null, v_started, null
        )::conveyor.step_runs;
        v_exec.status := 'waiting';
        v_exec.wait_kind := v_wait;
        v_exec.resume_at := v_resume;
        exit;
      end if;

      if v_wait = 'event' then
        -- dry run: no event will come; follow the timeout branch
        v_next := case when v_step.branches ? 'timeout' then v_step.branches ->> 'timeout' else v_step.next_step end;
        v_output := v_output || '{"timed_out": true, "event": null}';
      end if;
      v_nruns := v_nruns + 1;
      v_runs[v_nruns] := row(
        pg_catalog.nextval('conveyor.step_runs_step_run_id_seq'), v_exec.execution_id, v_exec.tenant_id,
        v_step.step_id, v_visit, 1, 'completed', v_input, v_output,
        null, case when v_wait = 'action' then format('%s:%s:%s', v_exec.execution_id, v_step.step_id, v_visit) end,
        null, v_next, v_started, pg_catalog.clock_timestamp()
      )::conveyor.step_runs;
      v_exec.step_outputs := v_exec.step_outputs
        || jsonb_build_object(v_step.step_id, jsonb_build_object('output', v_output));
      v_ctx_stale := true;
      if v_new_vars is not null then
        v_exec.vars := v_exec.vars || v_new_vars;
      end if;
      -- (both are flat values here: their sizes are read off their headers)
      v_state_bytes := pg_catalog.pg_column_size(v_exec.step_outputs) + pg_catalog.pg_column_size(v_exec.vars);
      if v_step.kind = 'stop' then
        v_final := v_output ->> 'status';
        if v_final = 'failed' then
          v_error := jsonb_build_object(
            'step', v_step.step_id,
            'message', coalesce(v_output ->> 'reason', format('stopped by step "%s"', v_step.step_id))
          );
        end if;
        exit;
      end if;
      v_exec.current_step := v_next;
    end loop;

    if v_final = 'completed' and v_exec.fanout_id is not null then
      v_done_children := v_done_children || v_exec.execution_id;
    end if;
    if v_final = 'completed' and v_exec.flow_key is not null then
      -- its concurrency slot goes to the next execution queued on its key
      v_freed_workflows := v_freed_workflows || v_exec.workflow_id;
      v_freed_keys := v_freed_keys || v_exec.flow_key;
    end if;
    if v_fanout.fanout_id is not null and v_exec.item is not null then
      -- a child stores its own step outputs only (its trigger is not written)
      v_exec.step_outputs := v_exec.step_outputs - v_fanout.parent_keys;
    end if;
    if v_final = 'completed' then
      -- what conveyor.finish_execution does, done in the batch's writes below
      v_exec.status := 'completed';
      v_exec.error := coalesce(v_error, v_exec.error);
      v_exec.wait_kind := null;
      v_exec.resume_at := null;
      v_exec.finished_at := greatest(now(), v_exec.started_at);
    elsif v_final is not null then
      v_i := pg_catalog.cardinality(v_final_ids) + 1;
      v_final_ids[v_i] := v_exec.execution_id;
      v_finals[v_i] := v_final;
      v_final_errors[v_i] := v_error;
    end if;
    v_nexecs := v_nexecs + 1;
    v_execs[v_nexecs] := v_exec;
  end loop;

  if v_nexecs = 0 then
    return;
  end if;
  if p_new then
    insert into conveyor.executions overriding system value
    select x.* from unnest(v_execs) as x;
  else
    update conveyor.executions as e
    set
      status = x.status,
      current_step = x.current_step,
      wait_kind = x.wait_kind,
      resume_at = x.resume_at,
      vars = x.vars,
      step_outputs = x.step_outputs,
      steps_run = x.steps_run,
      started_at = x.started_at,
      finished_at = x.finished_at,
      error = x.error
    from unnest(v_execs) as x
    where e.execution_id = x.execution_id;
  end if;

  if v_nruns > 0 then
    with sent as (
      select q.msg_id, q.step_run_id from conveyor.queue_messages(v_messages) as q
    )
    insert into conveyor.step_runs overriding system value
    select
      r.step_run_id, r.execution_id, r.tenant_id, r.step_id, r.visit, r.attempt, r.status, r.input, r.output,
      r.error, r.idempotency_key, s.msg_id, r.next_step, r.started_at, r.finished_at
    from unnest(v_runs) with ordinality as r
    left join sent as s on s.step_run_id = r.step_run_id
    order by r.ordinality;
  end if;
  if pg_catalog.cardinality(v_logs) > 0 then
    insert into conveyor.execution_logs (tenant_id, execution_id, workflow_id, step_id, level, message, details)
    select l.tenant_id, l.execution_id, l.workflow_id, l.step_id, l.level, l.message, l.details
    from unnest(v_logs) with ordinality as l
    order by l.ordinality;
  end if;

  -- the sharded stats of the executions that completed here (see finish_execution); a
  -- branch or an item of a fan-out is part of its parent's run, not one of its own
  insert into conveyor.workflow_stats as s (
    workflow_id, shard, tenant_id, completed, total_duration_ms, last_run_at
  )
  select
    x.workflow_id, conveyor.stats_shard(), x.tenant_id, count(*),
    sum((extract(epoch from x.finished_at - x.started_at) * 1000)::bigint), max(x.finished_at)
  from unnest(v_execs) as x
  where x.status = 'completed' and x.item is null
  group by x.workflow_id, x.tenant_id
  order by 1
  on conflict (workflow_id, shard) do update
    set
      completed = s.completed + excluded.completed,
      total_duration_ms = s.total_duration_ms + excluded.total_duration_ms,
      last_run_at = greatest(s.last_run_at, excluded.last_run_at);

  -- other final statuses (failed, cancelled by a stop step) also write an operator log line
  for v_i in 1 .. pg_catalog.cardinality(v_final_ids) loop
    perform conveyor.finish_execution(v_final_ids[v_i], v_finals[v_i], v_final_errors[v_i]);
  end loop;
  -- the children started here run, and those that completed are counted (sql/fanout_join.sql)
  if pg_catalog.cardinality(v_spawned) > 0 or pg_catalog.cardinality(v_done_children) > 0 then
    perform conveyor.fanout_follow_up(v_spawned, v_done_children);
  end if;
  if pg_catalog.cardinality(v_freed_keys) > 0 then
    perform conveyor.flow_release(v_freed_workflows, v_freed_keys);
  end if;
end;
$$;

revoke all on function conveyor.interpret_batch(conveyor.executions[], timestamptz, boolean) from public;

-- each step kind's code into interpret_batch, step_spec and step_decision (sql/step_kinds.sql)
select conveyor.generate_interpreter();
