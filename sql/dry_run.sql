-- Dry runs: a workflow document run against a sample event in a transaction that is rolled
-- back, with what each step would have done (conveyor.step_decision).

-- What each step of a dry-run execution did or would have done, in order (a fan-out step's
-- children are dry executions of their own: sql/fanout.sql, conveyor.fanout_dry_run).
create or replace function conveyor.dry_run_steps(p_execution_id bigint)
returns jsonb
language sql
stable
set search_path = ''
as $$
  select coalesce((
        select jsonb_agg(
          jsonb_build_object(
            'step', r.step_id,
            'kind', s.kind,
            'status', r.status,
            'decision', case
              when r.status = 'failed' then 'failed: ' || (r.error ->> 'message')
              else conveyor.step_decision(s.kind, r.input, r.output, s.action_type)
            end,
            'next', r.next_step,
            'input', r.input,
            'output', r.output,
            'error', r.error,
            'would_send', case when s.kind = 'action' then jsonb_build_object(
              'action', s.action_type,
              'connection', conveyor.step_spec(s.kind, s.config) ->> 'connection',
              'input', r.input,
              'idempotency_key', r.idempotency_key
            ) end
          )
          order by r.step_run_id
        )
        from conveyor.step_runs as r
        join conveyor.workflow_steps as s
          on s.workflow_id = e.workflow_id and s.version = e.version and s.step_id = r.step_id
        where r.execution_id = e.execution_id
      ), '[]')
  from conveyor.executions as e
  where e.execution_id = p_execution_id;
$$;

revoke all on function conveyor.dry_run_steps(bigint) from public;

-- Dry run: validate, publish, start and run a document against a sample trigger inside a
-- block that ends by raising a private exception, so everything is rolled back (no
-- version, no execution, no event, no queue message). Returns the decisions collected
-- before the rollback; when the trigger would refuse the sample (conveyor.trigger_verdict),
-- status would_not_start with the reason and message, and no steps.
create or replace function conveyor.dry_run(p_tenant_id text, p_document jsonb, p_trigger jsonb default '{}')
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_problems text[];
  v_result jsonb;
  v_workflow_id bigint;
  v_version integer;
  v_exec_id bigint;
  v_trigger jsonb;
  v_subscription conveyor.subscriptions;
  v_reason text;
  v_message text;
begin
  perform conveyor.require_tenant(p_tenant_id);
  select array_agg(p.problem) into v_problems from conveyor.validate_workflow(p_document) as p (problem);
  if cardinality(v_problems) > 0 then
    raise exception using
      errcode = '22023',
      message = format(
        'workflow "%s": %s problem(s): %s', p_document ->> 'slug', cardinality(v_problems), v_problems[1]
      ),
      detail = array_to_string(v_problems, E'\n');
  end if;

  begin
    perform pg_catalog.set_config('conveyor.dry_run', 'on', true);
    select p.workflow_id, p.version into v_workflow_id, v_version
    from conveyor.publish(p_tenant_id, p_document) as p;

    v_trigger := jsonb_build_object(
      'event_id', null,
      -- the document's event type unless it is a pattern (the sample may name one)
      'event_type', case
        when pg_catalog.strpos(p_document #>> '{trigger,event}', '*') = 0 then p_document #>> '{trigger,event}'
      end,
      'source', p_document #>> '{trigger,source}', 'entity_type', null, 'entity_id', null,
      'payload', '{}'::jsonb, 'changed_columns', null, 'occurred_at', now(), 'depth', 0
    ) || coalesce(p_trigger, '{}');

    -- the trigger first, as dispatch would judge this event now: type, source, depth,
    -- filter, condition, run once, rate and concurrency limits, the month's quota
    select s.* into v_subscription from conveyor.subscriptions as s
    where s.workflow_id = v_workflow_id and s.active;
    if found then
      select t.reason, t.message into v_reason, v_message from conveyor.trigger_verdict(v_subscription, v_trigger, true, true) as t;
    end if;

    if v_reason is not null then
      v_result := jsonb_build_object(
        'workflow', p_document ->> 'slug', 'status', 'would_not_start', 'reason', v_reason,
        'message', v_message, 'error', null, 'vars', '{}'::jsonb, 'steps', '[]'::jsonb
      );
    else
      insert into conveyor.executions (
        tenant_id, workflow_id, version, entity_type, entity_id, status, current_step, trigger, depth
      )
      select
        p_tenant_id, v_workflow_id, v_version, v_trigger ->> 'entity_type', v_trigger ->> 'entity_id', 'pending',
        v.entry_step, v_trigger, coalesce((v_trigger ->> 'depth')::integer, 0)
      from conveyor.workflow_versions as v
      where v.workflow_id = v_workflow_id and v.version = v_version
      returning execution_id into v_exec_id;

      perform conveyor.advance_execution(v_exec_id, now());

      select jsonb_build_object(
        'workflow', p_document ->> 'slug',
        'status', e.status,
        'error', e.error,
        'vars', e.vars,
        'steps', conveyor.dry_run_steps(e.execution_id)
      )
      into v_result
      from conveyor.executions as e
      where e.execution_id = v_exec_id;
    end if;

    raise exception using errcode = 'CVDRY', message = 'dry run: roll back';
  exception when sqlstate 'CVDRY' then
    null;
  end;
  return v_result;
end;
$$;

grant execute on function conveyor.dry_run(text, jsonb, jsonb) to conveyor_app, conveyor_service;
