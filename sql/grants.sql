-- Who may execute which function: the one place that says it, applied last (sql/ORDER).
--
-- PostgreSQL lets PUBLIC execute every new function. Here, on every migrate and after
-- every other file, PUBLIC loses that in the conveyor and pgmq schemas, so a function
-- added to any file later is executable by nobody but the owner until a line below
-- grants it. (ALTER DEFAULT PRIVILEGES cannot do this per schema: the per-schema form
-- only adds privileges, and the global form would also close the functions the platform
-- creates in its own schemas.)
--
--   conveyor_app      exactly the documented application API below: a new function is
--                     added here, and to tests/sql/test_grants.py, on purpose.
--   conveyor_service  the runner, `conveyor serve` and the CLI: every function, except the
--                     owner's and the internals of security definer functions below.
--   owner             everything (migrate runs as the owner or a superuser).

revoke execute on all functions in schema conveyor from public;
revoke execute on all functions in schema pgmq from public;

-- The application role: its API, and nothing else (grants made in other files included).
revoke execute on all functions in schema conveyor from conveyor_app;
revoke execute on all functions in schema pgmq from conveyor_app;
grant execute on function
-- the tenant context (current_tenant is called by every row-level security policy)
conveyor.set_tenant(text),
conveyor.current_tenant(),
-- events
conveyor.emit(text, text, jsonb, text, text, text, text),
conveyor.list_events(text, text, integer),
conveyor.explain_event(text, bigint),
conveyor.replay_event(text, bigint),
-- workflows
conveyor.publish(text, jsonb),
conveyor.set_workflow_active(text, text, boolean),
conveyor.export_workflow(text, text, integer),
conveyor.delete_workflow(text, text),
conveyor.dry_run(text, jsonb, jsonb),
-- executions
conveyor.trigger_workflow(text, text, jsonb, text, text),
conveyor.cancel_execution(text, bigint, text),
conveyor.retry_execution(text, bigint, boolean),
conveyor.pause_execution(text, bigint),
conveyor.resume_execution(text, bigint),
-- campaigns (sql/campaigns.sql)
conveyor.apply_campaign(text, jsonb),
conveyor.enroll_campaign(text, text, text[]),
conveyor.enroll_campaign_where(text, text, jsonb, integer),
conveyor.control_enrollment(text, bigint, text),
conveyor.control_campaign(text, text, text, integer),
conveyor.campaign_stats(text, text),
conveyor.list_campaigns(text),
conveyor.campaign_detail(text, text),
-- inbound HTTP
conveyor.webhook_endpoint(text, text),
conveyor.rotate_webhook_secret(text, text),
conveyor.create_api_key(text, text),
conveyor.revoke_api_key(text, text),
-- statistics
conveyor.workflow_summary(text, text, timestamptz),
conveyor.workflow_refusals(text, text, interval),
conveyor.top_errors(text, timestamptz, integer),
conveyor.slowest_steps(text, timestamptz, integer),
-- what the CLI shows of executions and workflows (sql/inspection.sql)
conveyor.list_executions(text, text, text, timestamptz, integer),
conveyor.execution_detail(text, bigint),
conveyor.execution_timeline(text, bigint),
conveyor.execution_log(text, bigint),
conveyor.execution_children(text, bigint),
conveyor.list_workflows(text),
conveyor.workflow_detail(text, text),
conveyor.compiled_steps(text, text, integer),
conveyor.published_versions(text, text),
-- the tenant's dead letters (sql/dead_letters.sql); requeueing is the operator's
conveyor.list_dead_letters(text, integer),
-- plans (sql/plans.sql): the platform's catalogue (set_plan acts for the installation, not
-- a tenant), a tenant's plan and its usage (tenant-checked)
conveyor.set_plan(text, jsonb),
conveyor.set_tenant_plan(text, text),
conveyor.plan_usage(text, timestamptz),
-- a user's in-app notifications (sql/notifications.sql): tenant-checked, one user's rows
conveyor.notify_user(text, text, jsonb),
conveyor.list_notifications(text, text, boolean, integer),
conveyor.mark_notification(text, text, bigint, text),
conveyor.mark_all_read(text, text),
-- what the notification stream reads (sql/notification_stream.sql): the same checks
conveyor.notifications_after(text, text, bigint, bigint[], integer),
conveyor.notification_stream_start(text, text),
-- notification templates, preferences and channels (sql/notification_*.sql): tenant-checked
conveyor.save_notification_template(text, text, jsonb),
conveyor.list_notification_templates(text),
conveyor.delete_notification_template(text, text),
conveyor.set_notification_preferences(text, text, text, jsonb),
conveyor.get_notification_preferences(text, text),
conveyor.set_notification_channel(text, text, text),
-- approvals (sql/approvals.sql): tenant-checked, one user's decisions
conveyor.decide_approval(text, text, bigint, text, text),
conveyor.delegate_approval(text, text, bigint, text, text),
conveyor.list_approvals(text, text, boolean, integer),
-- email tracking (sql/email_tracking.sql): tenant-checked
conveyor.record_email_event(text, text, text, timestamptz, jsonb),
conveyor.record_email_reply(text, text, text, jsonb),
conveyor.set_email_webhook(text, text, text)
to conveyor_app;

-- The service role: what the engine runs (tick, dispatch, read_actions, write_back, the
-- heartbeats, receive_webhook, http_trigger, ...) and pgmq's API.
grant execute on all functions in schema conveyor to conveyor_service;
grant execute on all functions in schema pgmq to conveyor_service;
revoke execute on function
-- the owner's: installation changes
conveyor.rotate_tenant_keys(),
conveyor.watch(regclass, text, text, name, name),
conveyor.unwatch(regclass),
conveyor.install_capture(regclass, text),
conveyor.install_ingest(regclass),
conveyor.ingest_table(regclass, integer),
conveyor.rewatch_altered_tables(),
-- internals of security definer functions, which act beyond the service role's own
-- privileges (queue messages, lock rows of a tenant's workflow)
conveyor.send_actions(bigint[], integer),
conveyor.queue_messages(jsonb[], integer),
conveyor.action_message(conveyor.step_runs, bigint, conveyor.workflow_steps),
conveyor.archive_actions(bigint[]),
conveyor.apply_action_results(jsonb),
conveyor.refuse_action_result(jsonb, text, text),
conveyor.keep_dead_letter(bigint, text, text),
conveyor.message_awaited(bigint, jsonb),
conveyor.delivery_awaited(bigint, jsonb),
conveyor.lock_tenant_execution(text, bigint, text),
conveyor.lock_workflow(text, text),
conveyor.data_step(text, jsonb, text),
conveyor.interpret_batch(conveyor.executions[], timestamptz, boolean),
conveyor.fail_uninterpretable(conveyor.executions, boolean, jsonb),
-- a fan-out step's children are made by the interpreter (sql/fanout.sql)
conveyor.fanout_begin(
  conveyor.executions, conveyor.workflow_steps, integer, text, jsonb, jsonb, timestamptz, boolean, text
),
conveyor.fanout_insert_children(conveyor.executions, conveyor.fanouts, text, jsonb, integer, jsonb),
conveyor.fanout_dry_run(conveyor.executions, conveyor.workflow_steps, text, text, jsonb, jsonb),
conveyor.call_child(conveyor.executions, text, jsonb, text),
-- an approval step's request is made by the interpreter (sql/approvals.sql)
conveyor.approval_begin(conveyor.executions, text, integer, jsonb, timestamptz, boolean, text),
conveyor.approval_slot(text, text, bigint, boolean),
conveyor.approval_apply(conveyor.approval_requests, timestamptz),
conveyor.approval_settle(conveyor.approval_requests, timestamptz),
-- a sent email's row is written by the write-back (sql/email_tracking.sql)
conveyor.record_email_sent(text, bigint, text, text, jsonb, jsonb),
conveyor.find_email_message(text, text, jsonb)
from conveyor_service;

-- Platform code that mints tenant tokens through SQL (migration 0021).
grant execute on function conveyor.mint_tenant_token(text, interval) to conveyor_tenant_issuer;

-- pgmq's own monitoring grant (usage and select to pg_monitor) keeps its read-only
-- functions, those of them the installed pgmq has.
do $$
declare
  v_name text;
begin
  foreach v_name in array array['pgmq.metrics(text)', 'pgmq.metrics_all()', 'pgmq.list_queues()'] loop
    if pg_catalog.to_regprocedure(v_name) is not null then
      execute format('grant execute on function %s to pg_monitor', pg_catalog.to_regprocedure(v_name));
    end if;
  end loop;
end
$$;
