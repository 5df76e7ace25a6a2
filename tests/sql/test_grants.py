"""Who may execute what (sql/grants.sql): the application role its API only, PUBLIC nothing."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from conveyor import settings
from conveyor.migrate import migrate
from tests.sql.tenant_context import acting_for, mint_token

Conn = psycopg.Connection[dict[str, Any]]

# Every function conveyor_app may execute, in any schema. A function added here is a
# reviewed change of the application's API: it must check the tenant (test_tenancy.py).
APPLICATION_API = {
    "conveyor.apply_campaign(text,jsonb)",
    "conveyor.campaign_detail(text,text)",
    "conveyor.campaign_stats(text,text)",
    "conveyor.list_campaigns(text)",
    "conveyor.control_campaign(text,text,text,integer)",
    "conveyor.control_enrollment(text,bigint,text)",
    "conveyor.enroll_campaign(text,text,text[])",
    "conveyor.enroll_campaign_where(text,text,jsonb,integer)",
    "conveyor.cancel_execution(text,bigint,text)",
    "conveyor.compiled_steps(text,text,integer)",
    "conveyor.create_api_key(text,text)",
    "conveyor.decide_approval(text,text,bigint,text,text)",
    "conveyor.delegate_approval(text,text,bigint,text,text)",
    "conveyor.current_tenant()",
    "conveyor.delete_workflow(text,text)",
    "conveyor.dry_run(text,jsonb,jsonb)",
    "conveyor.emit(text,text,jsonb,text,text,text,text)",
    "conveyor.execution_detail(text,bigint)",
    "conveyor.execution_log(text,bigint)",
    "conveyor.execution_timeline(text,bigint)",
    "conveyor.execution_children(text,bigint)",
    "conveyor.explain_event(text,bigint)",
    "conveyor.export_workflow(text,text,integer)",
    "conveyor.list_approvals(text,text,boolean,integer)",
    "conveyor.list_dead_letters(text,integer)",
    "conveyor.list_events(text,text,integer)",
    "conveyor.list_notifications(text,text,boolean,integer)",
    "conveyor.list_executions(text,text,text,timestamp with time zone,integer)",
    "conveyor.list_workflows(text)",
    "conveyor.mark_all_read(text,text)",
    "conveyor.mark_notification(text,text,bigint,text)",
    "conveyor.notify_user(text,text,jsonb)",
    "conveyor.notifications_after(text,text,bigint,bigint[],integer)",
    "conveyor.notification_stream_start(text,text)",
    "conveyor.save_notification_template(text,text,jsonb)",
    "conveyor.list_notification_templates(text)",
    "conveyor.delete_notification_template(text,text)",
    "conveyor.set_notification_preferences(text,text,text,jsonb)",
    "conveyor.get_notification_preferences(text,text)",
    "conveyor.set_notification_channel(text,text,text)",
    "conveyor.pause_execution(text,bigint)",
    "conveyor.plan_usage(text,timestamp with time zone)",
    "conveyor.publish(text,jsonb)",
    "conveyor.record_email_event(text,text,text,timestamp with time zone,jsonb)",
    "conveyor.record_email_reply(text,text,text,jsonb)",
    "conveyor.set_email_webhook(text,text,text)",
    "conveyor.published_versions(text,text)",
    "conveyor.replay_event(text,bigint)",
    "conveyor.resume_execution(text,bigint)",
    "conveyor.retry_execution(text,bigint,boolean)",
    "conveyor.revoke_api_key(text,text)",
    "conveyor.rotate_webhook_secret(text,text)",
    "conveyor.set_plan(text,jsonb)",
    "conveyor.set_tenant(text)",
    "conveyor.set_tenant_plan(text,text)",
    "conveyor.set_workflow_active(text,text,boolean)",
    "conveyor.slowest_steps(text,timestamp with time zone,integer)",
    "conveyor.top_errors(text,timestamp with time zone,integer)",
    "conveyor.trigger_workflow(text,text,jsonb,text,text)",
    "conveyor.webhook_endpoint(text,text)",
    "conveyor.workflow_detail(text,text)",
    "conveyor.workflow_summary(text,text,timestamp with time zone)",
    "conveyor.workflow_refusals(text,text,interval)",
}

EXECUTABLE = """
select p.oid::regprocedure::text as function
from pg_proc as p join pg_namespace as n on n.oid = p.pronamespace
where n.nspname not in ('pg_catalog', 'information_schema')
  and has_schema_privilege(%(role)s, n.oid, 'usage')
  and has_function_privilege(%(role)s, p.oid, 'execute')
"""


@pytest.fixture
def app(db_url: str, conn: Conn) -> Iterator[Conn]:
    """The application role, with a verified tenant available (acme)."""
    conn.execute("select conveyor.create_tenant('acme', 'Acme')")
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as session:
        session.execute("set role conveyor_app")
        yield session


def executable(conn: Conn, role: str) -> set[str]:
    return {str(r["function"]) for r in conn.execute(EXECUTABLE, {"role": role}).fetchall()}


def test_the_application_role_executes_exactly_its_api(conn: Conn) -> None:
    assert executable(conn, "conveyor_app") == APPLICATION_API


def test_public_executes_no_conveyor_or_pgmq_function(conn: Conn) -> None:
    open_to_public = conn.execute("""
        select p.oid::regprocedure::text as function
        from pg_proc as p join pg_namespace as n on n.oid = p.pronamespace
        where n.nspname in ('conveyor', 'pgmq')
          and has_function_privilege('public', p.oid, 'execute')
        """).fetchall()
    assert open_to_public == []


@pytest.mark.parametrize(
    "call",
    [
        "select conveyor.dispatch()",
        "select conveyor.tick()",
        "select conveyor.start_workflow(1, '{}')",
        "select conveyor.read_actions(10, 30, 30)",
        "select * from conveyor.write_back('[]')",
        "select conveyor.resume_due()",
        "select conveyor.ingest_captures()",
        "select conveyor.prune_history(now(), 10)",
        "select conveyor.system_status()",
        "select conveyor.validate_workflow('{}')",
        "select conveyor.mint_tenant_token('acme')",
        "select conveyor.rotate_tenant_keys()",
        "select conveyor.require_tenant('acme')",
        "select pgmq.send('conveyor_actions', '{}')",
        "select pgmq.purge_queue('conveyor_actions')",
        "select pgmq.drop_queue('conveyor_actions')",
    ],
)
def test_internal_functions_are_refused_to_the_application_role(app: Conn, conn: Conn, call: str) -> None:
    token = mint_token(conn, "acme")
    with (
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for"),
        acting_for(app, token),
    ):
        app.execute(call)


def test_the_service_role_executes_what_the_runner_and_serve_call(db_url: str, conn: Conn) -> None:
    # As the runner logs in: a plain member of conveyor_service that switches to it.
    conn.execute(
        "do $$ begin if not exists (select from pg_roles where rolname = 'grants_runner') then "
        "create role grants_runner login in role conveyor_service; end if; end $$"
    )
    with psycopg.connect(db_url, user="grants_runner", autocommit=True, row_factory=dict_row) as runner:
        runner.execute("set role conveyor_service")
        runner.execute("select conveyor.tick(), conveyor.dispatch(), conveyor.next_work_due_at()")
        runner.execute("select * from conveyor.read_actions(10, 30, 30)")
        runner.execute("select * from conveyor.write_back('[]')")
        runner.execute("select pgmq.set_vt('conveyor_actions', array[]::bigint[], 30)")
        runner.execute(
            "select conveyor.runner_heartbeat(gen_random_uuid(), 'h', 1, 'v'), conveyor.system_status()"
        )
        runner.execute("select * from conveyor.http_trigger('cvk_unknown', 'x', '{}')")
        runner.execute(
            "select conveyor.create_tenant('globex', 'Globex'), conveyor.mint_tenant_token('globex')"
        )
        for owners_only in (
            "select conveyor.rotate_tenant_keys()",
            "select conveyor.watch('conveyor.tenants', 'x')",
            "select conveyor.send_actions(array[]::bigint[])",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                runner.execute(owners_only)


def test_pg_monitor_keeps_pgmqs_metrics(conn: Conn) -> None:
    assert executable(conn, "pg_monitor") >= {
        "pgmq.metrics(text)",
        "pgmq.metrics_all()",
        "pgmq.list_queues()",
    }
    assert "pgmq.send(text,jsonb,integer)" not in executable(conn, "pg_monitor")


def test_a_function_added_later_is_executable_by_no_one_until_granted(
    db_url: str, conn: Conn, tmp_path: Path
) -> None:
    sql_dir = tmp_path / "sql"
    shutil.copytree(settings.SQL_DIR, sql_dir)
    (sql_dir / "added_later.sql").write_text(
        "create or replace function conveyor.requeue_everything() returns integer\n"
        "language sql set search_path = '' as $$ select 1 $$;\n"
    )
    order = (sql_dir / "ORDER").read_text().replace("grants.sql", "added_later.sql\ngrants.sql")
    (sql_dir / "ORDER").write_text(order)
    migrate(db_url, sql_dir=sql_dir)
    privileges = conn.execute("""
        select has_function_privilege('public', 'conveyor.requeue_everything()', 'execute') as public,
               has_function_privilege('conveyor_app', 'conveyor.requeue_everything()', 'execute') as app
        """).fetchone()
    assert privileges == {"public": False, "app": False}
    assert executable(conn, "conveyor_app") == APPLICATION_API
