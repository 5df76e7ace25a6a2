"""What the CLI shows of executions and workflows (sql/inspection.sql), for one tenant only."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from tests.sql.tenant_context import acting_for, mint_token
from tests.sql.workflow_documents import NOTIFY

Conn = psycopg.Connection[dict[str, Any]]


def trigger(conn: Conn, tenant: str, slug: str, who: str) -> int:
    row = conn.execute(
        "select conveyor.trigger_workflow(%s, %s, %s) as id", (tenant, slug, Jsonb({"who": who}))
    ).fetchone()
    assert row is not None
    return int(row["id"])


def fail_queued_action(conn: Conn, execution_id: int) -> None:
    run = conn.execute(
        "select msg_id, step_run_id from conveyor.step_runs where execution_id = %s and status = 'queued'",
        (execution_id,),
    ).fetchone()
    assert run is not None
    conn.execute(
        "select * from conveyor.write_back(%s)",
        (Jsonb([{**run, "ok": False, "retryable": False, "error": {"message": "HTTP 404"}}]),),
    )


@pytest.fixture
def tenants(conn: Conn) -> Conn:
    """acme and globex, each with workflow "notify" and executions of it: acme's first
    failed at its webhook, its second waits for it; globex's waits."""
    conn.execute("select conveyor.create_tenant('acme', 'Acme'), conveyor.create_tenant('globex', 'Globex')")
    for tenant in ("acme", "globex"):
        conn.execute("select conveyor.publish(%s, %s)", (tenant, Jsonb(NOTIFY)))
    fail_queued_action(conn, trigger(conn, "acme", "notify", "Ada"))
    trigger(conn, "acme", "notify", "Bob")
    trigger(conn, "globex", "notify", "Eve")
    return conn


def executions_of(conn: Conn, tenant: str) -> list[int]:
    rows = conn.execute(
        "select execution_id from conveyor.executions where tenant_id = %s order by execution_id", (tenant,)
    ).fetchall()
    return [int(r["execution_id"]) for r in rows]


def test_list_executions_shows_the_tenants_newest_first(tenants: Conn) -> None:
    failed, waiting = executions_of(tenants, "acme")
    rows = tenants.execute("select * from conveyor.list_executions('acme')").fetchall()
    assert [(r["id"], r["workflow"], r["version"], r["status"], r["step"], r["error"]) for r in rows] == [
        (waiting, "notify", 1, "waiting", "call", None),
        (
            failed,
            "notify",
            1,
            "failed",
            "call",
            'step "call" (webhook.send) failed after 1 attempt(s): HTTP 404',
        ),
    ]
    assert all(r["ms"] >= 0 and r["created_at"] is not None for r in rows)


def test_list_executions_filters_by_status_workflow_time_and_count(tenants: Conn) -> None:
    failed, waiting = executions_of(tenants, "acme")

    def ids(**filters: object) -> list[int]:
        named = "".join(f", p_{name} => %({name})s" for name in filters)
        query = f"select id from conveyor.list_executions('acme'{named})"
        return [int(r["id"]) for r in tenants.execute(query, filters).fetchall()]

    assert ids(status="failed") == [failed]
    assert ids(workflow="notify") == [waiting, failed]
    assert ids(workflow="no-such-workflow") == []
    assert ids(limit=1) == [waiting]
    tenants.execute(
        "update conveyor.executions set created_at = now() - interval '2 days' where execution_id = %s",
        (failed,),
    )
    assert ids() == [waiting]
    assert ids(since=None) == [waiting, failed]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ("'acme', 'done'", "p_status: 'done' is not an execution status"),
        ("'acme', p_limit => -1", "p_limit: -1 is not a number of executions"),
        ("'acme', p_limit => null", "p_limit: null is not a number of executions"),
    ],
)
def test_list_executions_refuses_bad_filters_by_name(tenants: Conn, arguments: str, message: str) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=message):
        tenants.execute(f"select * from conveyor.list_executions({arguments})")


def test_execution_detail_is_the_execution_row_with_its_workflows_slug(tenants: Conn) -> None:
    failed, _ = executions_of(tenants, "acme")
    detail = tenants.execute("select * from conveyor.execution_detail('acme', %s)", (failed,)).fetchall()
    table = tenants.execute(
        "select x.*, w.slug from conveyor.executions as x join conveyor.workflows as w using (workflow_id)"
        " where x.execution_id = %s",
        (failed,),
    ).fetchall()
    # Every column, in the table's order: what `executions show --json` printed before.
    assert [list(r.items()) for r in detail] == [list(r.items()) for r in table]
    assert detail[0]["slug"] == "notify" and detail[0]["error"]["message"].endswith("HTTP 404")


def test_execution_timeline_lists_every_step_run_in_order(tenants: Conn) -> None:
    failed, waiting = executions_of(tenants, "acme")
    steps = tenants.execute("select * from conveyor.execution_timeline('acme', %s)", (failed,)).fetchall()
    assert [(s["step"], s["visit"], s["attempt"], s["status"]) for s in steps] == [
        ("prepare", 1, 1, "completed"),
        ("call", 1, 1, "failed"),
    ]
    assert steps[0]["output"] == {"greeting": "hello Ada"} and steps[0]["ms"] >= 0
    assert (
        steps[1]["input"]["url"] == "http://127.0.0.1:9/hook" and steps[1]["error"]["message"] == "HTTP 404"
    )
    open_run = tenants.execute("select * from conveyor.execution_timeline('acme', %s)", (waiting,)).fetchall()
    assert [(s["step"], s["status"], s["ms"]) for s in open_run][-1] == ("call", "queued", None)


def test_execution_log_is_the_executions_lines_oldest_first(tenants: Conn) -> None:
    failed, _ = executions_of(tenants, "acme")
    tenants.execute(
        "insert into conveyor.execution_logs (tenant_id, execution_id, level, message)"
        " values ('acme', %s, 'info', 'looked at by an operator')",
        (failed,),
    )
    lines = tenants.execute("select * from conveyor.execution_log('acme', %s)", (failed,)).fetchall()
    expected = tenants.execute(
        "select logged_at, level, message from conveyor.execution_logs where execution_id = %s order by log_id",
        (failed,),
    ).fetchall()
    assert lines == expected and lines[-1]["message"] == "looked at by an operator"
    assert any(line["level"] == "error" for line in lines)


def test_list_workflows_names_what_starts_each(tenants: Conn) -> None:
    documents = [
        {"slug": "on-event", "trigger": {"event": "crm.contact.created"}},
        {"slug": "on-cron", "trigger": {"schedule": {"cron": "0 8 * * MON", "timezone": "UTC"}}},
        {"slug": "on-webhook", "trigger": {"webhook": {"methods": ["POST"]}}},
    ]
    for document in documents:
        step = {"id": "s", "set": {"x": 1}}
        tenants.execute(
            "select conveyor.publish('acme', %s)",
            (Jsonb({**document, "name": document["slug"], "steps": [step]}),),
        )
    rows = tenants.execute("select * from conveyor.list_workflows('acme')").fetchall()
    assert [(r["slug"], r["name"], r["active"], r["version"], r["trigger"]) for r in rows] == [
        ("notify", "Notify", True, 1, "manual"),
        ("on-cron", "on-cron", True, 1, "cron 0 8 * * MON"),
        ("on-event", "on-event", True, 1, "crm.contact.created"),
        ("on-webhook", "on-webhook", True, 1, "webhook"),
    ]
    assert all(r["updated_at"] is not None and r["category"] is None for r in rows)


def test_workflow_detail_compiled_steps_and_published_versions(tenants: Conn) -> None:
    changed = {**NOTIFY, "description": "Second draft.", "steps": [{"id": "only", "set": {"x": 1}}]}
    tenants.execute("select conveyor.publish('acme', %s)", (Jsonb(changed),))
    detail = tenants.execute("select * from conveyor.workflow_detail('acme', 'notify')").fetchall()
    table = tenants.execute(
        "select * from conveyor.workflows where tenant_id = 'acme' and slug = 'notify'"
    ).fetchall()
    assert [list(r.items()) for r in detail] == [list(r.items()) for r in table]
    assert detail[0]["current_version"] == 2 and detail[0]["description"] == "Second draft."

    current = tenants.execute("select * from conveyor.compiled_steps('acme', 'notify')").fetchall()
    assert current == [
        {
            "step_id": "only",
            "kind": "set_variable",
            "action": "",
            "next_step": None,
            "branches": None,
            "on_error": "fail",
        }
    ]
    first = tenants.execute("select * from conveyor.compiled_steps('acme', 'notify', 1)").fetchall()
    assert [(s["step_id"], s["kind"], s["action"], s["next_step"]) for s in first] == [
        ("prepare", "set_variable", "", "call"),
        ("call", "action", "webhook.send", "after"),
        ("after", "set_variable", "", None),
    ]
    versions = tenants.execute("select * from conveyor.published_versions('acme', 'notify')").fetchall()
    assert [v["version"] for v in versions] == [1, 2]
    assert versions[0]["published_at"] <= versions[1]["published_at"]


def test_a_missing_execution_or_workflow_is_no_row(tenants: Conn) -> None:
    for query in (
        "select * from conveyor.execution_detail('acme', -1)",
        "select * from conveyor.execution_timeline('acme', -1)",
        "select * from conveyor.workflow_detail('acme', 'nope')",
        "select * from conveyor.compiled_steps('acme', 'nope')",
        "select * from conveyor.published_versions('acme', 'nope')",
    ):
        assert tenants.execute(query).fetchall() == [], query


# Each function asked, for tenant %(t)s, about what acme owns (%(x)s: acme's failed execution).
READS = {
    "list_executions": "select * from conveyor.list_executions(%(t)s)",
    "execution_detail": "select * from conveyor.execution_detail(%(t)s, %(x)s)",
    "execution_timeline": "select * from conveyor.execution_timeline(%(t)s, %(x)s)",
    "execution_log": "select * from conveyor.execution_log(%(t)s, %(x)s)",
    "list_workflows": "select * from conveyor.list_workflows(%(t)s)",
    "workflow_detail": "select * from conveyor.workflow_detail(%(t)s, 'notify')",
    "compiled_steps": "select * from conveyor.compiled_steps(%(t)s, 'notify')",
    "published_versions": "select * from conveyor.published_versions(%(t)s, 'notify')",
}


def forget_tenant(conn: Conn, tenant: str) -> None:
    """Delete every execution and workflow of the tenant (with their step runs, logs, versions)."""
    for table in ("step_runs", "execution_logs", "executions", "workflows"):
        conn.execute(f"delete from conveyor.{table} where tenant_id = %s", (tenant,))


def test_another_tenant_reads_none_of_acmes_rows(tenants: Conn) -> None:
    failed, _ = executions_of(tenants, "acme")
    with tenants.transaction():  # one now() for the durations of open executions
        for function, query in READS.items():
            assert tenants.execute(query, {"t": "acme", "x": failed}).fetchall(), f"{function}: acme's rows"
        theirs = {f: tenants.execute(q, {"t": "globex", "x": failed}).fetchall() for f, q in READS.items()}
        # globex's answers do not change when acme's rows are gone: none of them was in one.
        forget_tenant(tenants, "acme")
        assert {
            f: tenants.execute(q, {"t": "globex", "x": failed}).fetchall() for f, q in READS.items()
        } == theirs
    assert {f: rows for f, rows in theirs.items() if f.startswith("execution_")} == {
        "execution_detail": [],
        "execution_timeline": [],
        "execution_log": [],
    }, "acme's execution, asked for by its id"


@pytest.fixture
def app(db_url: str, tenants: Conn) -> Iterator[Conn]:
    """The application role (RLS-limited), no tenant set yet."""
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as session:
        session.execute("set role conveyor_app")
        yield session


def test_the_application_role_reads_only_its_verified_tenant(app: Conn, tenants: Conn) -> None:
    failed, _ = executions_of(tenants, "acme")

    def read(conn: Conn, function: str, tenant: str) -> list[dict[str, Any]]:
        rows = conn.execute(READS[function], {"t": tenant, "x": failed}).fetchall()
        # ms of an open execution runs with the clock: not part of the comparison
        return [{k: v for k, v in r.items() if k != "ms" or function != "list_executions"} for r in rows]

    for function in READS:
        as_service = read(tenants, function, "acme")
        with acting_for(app, mint_token(tenants, "acme")):
            assert read(app, function, "acme") == as_service, function
        with (
            pytest.raises(
                psycopg.errors.InsufficientPrivilege, match="'globex' is not this session's tenant"
            ),
            acting_for(app, mint_token(tenants, "acme")),
        ):
            read(app, function, "globex")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="no tenant is set for this session"):
            read(app, function, "acme")
