"""The step interpreter: internal steps, branching, templates across steps, budgets, errors.

Workflows are installed through `conveyor.compile_steps` (the publish compiler) without the
validation step, so each test states the graph it needs in the document format.
The helpers are tests/sql/interpreter_helpers.py's; the `tenant` fixture (acme) is conftest's.
"""

from __future__ import annotations

import pytest
from psycopg.types.json import Jsonb

from tests.sql.interpreter_helpers import (
    Conn,
    execution,
    install,
    make_tenant,
    queued_messages,
    start,
    step_runs,
    visited,
)


def test_variables_and_outputs_flow_between_steps(conn: Conn, tenant: str) -> None:
    wf = install(
        conn,
        tenant,
        {
            "slug": "flow",
            "steps": [
                {
                    "id": "name",
                    "set": {"first": "{{trigger.payload.first_name}}", "amount": "{{trigger.payload.n}}"},
                },
                {
                    "id": "greet",
                    "transform": {"op": "render", "template": "Hello {{vars.first}}", "into": "greeting"},
                },
                {"id": "again", "transform": {"op": "render", "template": "{{steps.greet.output.value}}!"}},
            ],
        },
    )
    eid = start(conn, tenant, wf, {"payload": {"first_name": "Ada", "n": 42}})
    e = execution(conn, eid)
    assert e["status"] == "completed"
    assert e["finished_at"] is not None
    assert e["vars"] == {"first": "Ada", "amount": 42, "greeting": "Hello Ada"}
    assert e["step_outputs"]["again"] == {"output": {"value": "Hello Ada!"}}
    assert visited(conn, eid) == ["name", "greet", "again"]
    assert [r["status"] for r in step_runs(conn, eid)] == ["completed"] * 3
    assert e["steps_run"] == 3


def test_condition_follows_then_or_else(conn: Conn, tenant: str) -> None:
    wf = install(
        conn,
        tenant,
        {
            "slug": "cond",
            "steps": [
                {
                    "id": "big?",
                    "if": {"field": "{{trigger.payload.amount}}", "op": "gte", "value": 100},
                    "then": "big",
                    "else": "small",
                },
                {"id": "big", "set": {"size": "big"}, "next": None},
                {"id": "small", "set": {"size": "small"}},
            ],
        },
    )
    big = start(conn, tenant, wf, {"payload": {"amount": 250}})
    small = start(conn, tenant, wf, {"payload": {"amount": 5}})
    assert visited(conn, big) == ["big?", "big"]
    assert execution(conn, big)["vars"] == {"size": "big"}
    assert visited(conn, small) == ["big?", "small"]
    assert step_runs(conn, small)[0]["output"] == {"result": False, "branch": "else"}
    assert step_runs(conn, small)[0]["next_step"] == "small"


def test_switch_takes_first_matching_case_else_default(conn: Conn, tenant: str) -> None:
    wf = install(
        conn,
        tenant,
        {
            "slug": "sw",
            "steps": [
                {
                    "id": "route",
                    "switch": [
                        {
                            "when": {"field": "{{trigger.payload.stage}}", "op": "equals", "value": "won"},
                            "goto": "won",
                        },
                        {
                            "when": {"field": "{{trigger.payload.amount}}", "op": "gt", "value": 10},
                            "goto": "big",
                        },
                        {
                            "when": {"field": "{{trigger.payload.amount}}", "op": "gt", "value": 0},
                            "goto": "won",
                        },
                    ],
                    "default": "other",
                },
                {"id": "won", "set": {"r": "won"}, "next": None},
                {"id": "big", "set": {"r": "big"}, "next": None},
                {"id": "other", "set": {"r": "other"}},
            ],
        },
    )
    results = {
        name: execution(conn, start(conn, tenant, wf, {"payload": payload}))["vars"]["r"]
        for name, payload in {
            "won": {"stage": "won", "amount": 50},
            "big": {"stage": "open", "amount": 50},
            "other": {"stage": "open", "amount": 0},
        }.items()
    }
    assert results == {"won": "won", "big": "big", "other": "other"}


def test_transform_operations(conn: Conn, tenant: str) -> None:
    items = [{"sku": "a", "amount": 5}, {"sku": "b", "amount": 20}, {"sku": "c", "amount": 12}]
    src = "{{trigger.payload.items}}"
    wf = install(
        conn,
        tenant,
        {
            "slug": "tx",
            "steps": [
                {"id": "skus", "transform": {"op": "map", "source": src, "template": "{{item.sku}}"}},
                {
                    "id": "big",
                    "transform": {
                        "op": "filter",
                        "source": src,
                        "where": {"field": "{{item.amount}}", "op": "gt", "value": 10},
                    },
                },
                {
                    "id": "total",
                    "transform": {
                        "op": "aggregate",
                        "source": src,
                        "function": "sum",
                        "field": "amount",
                        "into": "total",
                    },
                },
                {"id": "count", "transform": {"op": "aggregate", "source": src, "function": "count"}},
                {
                    "id": "max",
                    "transform": {"op": "aggregate", "source": src, "function": "max", "field": "amount"},
                },
                {
                    "id": "day",
                    "transform": {
                        "op": "format_date",
                        "value": "{{trigger.payload.at}}",
                        "format": "YYYY-MM-DD HH24:MI",
                        "timezone": "Europe/Berlin",
                    },
                },
            ],
        },
    )
    eid = start(conn, tenant, wf, {"payload": {"items": items, "at": "2026-03-01T23:30:00Z"}})
    e = execution(conn, eid)
    assert e["status"] == "completed", e["error"]
    out = {k: v["output"]["value"] for k, v in e["step_outputs"].items()}
    assert out["skus"] == ["a", "b", "c"]
    assert out["big"] == [items[1], items[2]]
    assert out["total"] == 37
    assert out["count"] == 3
    assert out["max"] == 20
    assert out["day"] == "2026-03-02 00:30"
    assert e["vars"] == {"total": 37}


def test_stop_ends_the_execution_with_its_status(conn: Conn, tenant: str) -> None:
    ok = install(
        conn, tenant, {"slug": "s1", "steps": [{"id": "s", "stop": {}}, {"id": "never", "set": {"x": 1}}]}
    )
    bad = install(
        conn,
        tenant,
        {
            "slug": "s2",
            "steps": [
                {"id": "s", "stop": {"status": "failed", "reason": "no email for {{trigger.entity_id}}"}}
            ],
        },
    )
    e1 = execution(conn, start(conn, tenant, ok))
    e2 = execution(conn, start(conn, tenant, bad))
    assert e1["status"] == "completed"
    assert visited(conn, e1["execution_id"]) == ["s"]
    assert e2["status"] == "failed"
    assert e2["error"] == {"step": "s", "message": "no email for c1"}


def test_emit_inserts_a_deeper_event_caused_by_the_execution(conn: Conn, tenant: str) -> None:
    wf = install(
        conn,
        tenant,
        {
            "slug": "emit",
            "steps": [
                {
                    "id": "tell",
                    "emit": {
                        "event": "crm.lead.qualified",
                        "payload": {"who": "{{trigger.entity_id}}"},
                        "entity_type": "contact",
                        "entity_id": "{{trigger.entity_id}}",
                    },
                }
            ],
        },
    )
    eid = start(conn, tenant, wf, run=False)
    conn.execute("update conveyor.executions set depth = 2 where execution_id = %s", (eid,))
    conn.execute("select conveyor.run_executions(array[%s]::bigint[])", (eid,))
    event = conn.execute("select * from conveyor.events where caused_by_execution_id = %s", (eid,)).fetchone()
    assert event is not None
    assert (event["tenant_id"], event["event_type"], event["entity_id"]) == (
        tenant,
        "crm.lead.qualified",
        "c1",
    )
    assert event["payload"] == {"who": "c1"}
    assert event["depth"] == 3  # execution depth 2 + 1
    assert execution(conn, eid)["step_outputs"]["tell"]["output"]["event_id"] == event["event_id"]


@pytest.fixture
def contacts(conn: Conn, tenant: str) -> None:
    make_tenant(conn, "other")
    conn.execute(
        """create table public.contacts (
             id text primary key, org text not null, email text, stage text, score integer, tags text[])"""
    )
    conn.execute(
        "insert into conveyor.entities values ('contact', 'public.contacts', 'id', 'org', 'tags')",
    )
    conn.execute(
        """insert into public.contacts values
             ('c1', 'acme', 'ada@acme.test', 'lead', 1, '{}'),
             ('x1', 'other', 'eve@other.test', 'lead', 1, '{}')"""
    )


def test_data_steps_change_only_the_execution_tenants_rows(conn: Conn, tenant: str, contacts: None) -> None:
    wf = install(
        conn,
        tenant,
        {
            "slug": "data",
            "steps": [
                {"id": "me", "data": {"op": "lookup", "entity": "contact", "id": "{{trigger.entity_id}}"}},
                {"id": "foreign", "data": {"op": "lookup", "entity": "contact", "id": "x1"}},
                {
                    "id": "foreign_upd",
                    "data": {"op": "update", "entity": "contact", "id": "x1", "values": {"stage": "hacked"}},
                },
                {
                    "id": "new",
                    "data": {
                        "op": "create",
                        "entity": "contact",
                        "values": {"id": "c2", "email": "{{steps.me.output.email}}", "score": 7},
                    },
                },
                {
                    "id": "upd",
                    "data": {
                        "op": "update",
                        "entity": "contact",
                        "where": {"stage": "lead"},
                        "values": {"stage": "customer"},
                    },
                },
                {"id": "tag", "data": {"op": "add_tag", "entity": "contact", "id": "c1", "tag": "vip"}},
                {"id": "tag2", "data": {"op": "add_tag", "entity": "contact", "id": "c1", "tag": "vip"}},
                {"id": "untag", "data": {"op": "remove_tag", "entity": "contact", "id": "c2", "tag": "none"}},
                {"id": "del", "data": {"op": "delete", "entity": "contact", "id": "c2"}},
            ],
        },
    )
    eid = start(conn, tenant, wf)
    e = execution(conn, eid)
    assert e["status"] == "completed", e["error"]
    out = {k: v["output"] for k, v in e["step_outputs"].items()}
    assert out["me"]["email"] == "ada@acme.test"
    assert out["foreign"] is None
    assert out["foreign_upd"] == {"count": 0, "rows": []}
    assert out["new"] == {
        "id": "c2",
        "org": "acme",
        "email": "ada@acme.test",
        "stage": None,
        "score": 7,
        "tags": None,
    }
    assert out["upd"]["count"] == 1  # c1 only: c2 has no stage, x1 belongs to the other tenant
    assert out["tag2"]["rows"][0]["tags"] == ["vip"]
    assert out["del"]["count"] == 1
    rows = conn.execute("select id, org, stage, tags from public.contacts order by id").fetchall()
    assert rows == [
        {"id": "c1", "org": "acme", "stage": "customer", "tags": ["vip"]},
        {"id": "x1", "org": "other", "stage": "lead", "tags": []},
    ]


def test_data_step_refuses_unknown_columns_and_tenant_column(conn: Conn, tenant: str, contacts: None) -> None:
    wf = install(
        conn,
        tenant,
        {
            "slug": "bad",
            "steps": [
                {
                    "id": "a",
                    "data": {"op": "update", "entity": "contact", "id": "c1", "values": {"nope": 1}},
                    "on_error": "continue",
                },
                {
                    "id": "b",
                    "data": {"op": "update", "entity": "contact", "id": "c1", "values": {"org": "other"}},
                    "on_error": "continue",
                },
                {"id": "c", "data": {"op": "delete", "entity": "contact"}},
            ],
        },
    )
    e = execution(conn, start(conn, tenant, wf))
    errors = {k: v["error"]["message"] for k, v in e["step_outputs"].items()}
    assert errors == {
        "a": 'step "a".data: entity "contact" has no column(s) "nope"',
        "b": 'step "a".data.values.org: the tenant column is set by the engine'.replace('"a"', '"b"'),
    }
    assert e["status"] == "failed"
    assert e["error"]["step"] == "c"
    assert e["error"]["message"] == 'step "c".data: data.delete needs "id" or "where"'
    assert conn.execute("select count(*) as n from public.contacts").fetchone() == {"n": 2}


def test_step_budget_stops_a_self_loop(conn: Conn, tenant: str) -> None:
    wf = install(
        conn,
        tenant,
        {"slug": "loop", "steps": [{"id": "spin", "set": {"x": 1}, "next": "spin"}]},
        max_steps=25,
    )
    e = execution(conn, start(conn, tenant, wf))
    assert e["status"] == "failed"
    assert e["steps_run"] == 25
    assert "step budget exceeded: 25 steps run" in e["error"]["message"]
    assert e["error"]["step"] == "spin"
    assert len(step_runs(conn, e["execution_id"])) == 25
    assert max(r["visit"] for r in step_runs(conn, e["execution_id"])) == 25
    log = conn.execute(
        "select level, message from conveyor.execution_logs where execution_id = %s", (e["execution_id"],)
    ).fetchall()
    assert [x["level"] for x in log] == ["error"]
    assert "step budget exceeded" in log[0]["message"]


def test_render_error_fails_the_execution_and_names_the_step(conn: Conn, tenant: str) -> None:
    wf = install(
        conn,
        tenant,
        {
            "slug": "err",
            "steps": [{"id": "s", "set": {"x": "{{trigger.payload.missing}}"}}, {"id": "t", "set": {"y": 1}}],
        },
    )
    e = execution(conn, start(conn, tenant, wf))
    assert e["status"] == "failed"
    assert e["error"]["step"] == "s"
    assert "missing" in e["error"]["message"]
    runs = step_runs(conn, e["execution_id"])
    assert [(r["step_id"], r["status"]) for r in runs] == [("s", "failed")]
    assert runs[0]["error"]["message"] == e["error"]["message"]
    assert e["vars"] == {}


def test_on_error_continue_and_goto(conn: Conn, tenant: str) -> None:
    wf = install(
        conn,
        tenant,
        {
            "slug": "policies",
            "steps": [
                {"id": "a", "set": {"x": "{{trigger.payload.missing}}"}, "on_error": "continue"},
                {"id": "b", "set": {"y": "{{vars.nope}}"}, "on_error": {"goto": "rescue"}},
                {"id": "skipped", "set": {"skipped": True}},
                {"id": "rescue", "set": {"rescued": "{{steps.b.error.step}}"}},
            ],
        },
    )
    e = execution(conn, start(conn, tenant, wf))
    assert e["status"] == "completed", e["error"]
    assert visited(conn, e["execution_id"]) == ["a", "b", "rescue"]
    assert e["vars"] == {"rescued": "b"}
    assert [r["level"] for r in conn.execute("select level from conveyor.execution_logs").fetchall()] == [
        "warning",
        "warning",
    ]


def test_a_failing_step_changes_nothing_but_earlier_steps_stay(
    conn: Conn, tenant: str, contacts: None
) -> None:
    conn.execute("alter table public.contacts add constraint score_small check (score < 100)")
    wf = install(
        conn,
        tenant,
        {
            "slug": "atomic",
            "steps": [
                {
                    "id": "first",
                    "data": {"op": "update", "entity": "contact", "id": "c1", "values": {"score": 50}},
                },
                {
                    "id": "second",
                    "data": {"op": "update", "entity": "contact", "id": "c1", "values": {"score": 500}},
                },
            ],
        },
    )
    e = execution(conn, start(conn, tenant, wf))
    assert e["status"] == "failed"
    assert e["error"]["step"] == "second"
    assert "score_small" in e["error"]["message"]
    assert conn.execute("select score from public.contacts where id = 'c1'").fetchone() == {"score": 50}
    assert [(r["step_id"], r["status"]) for r in step_runs(conn, e["execution_id"])] == [
        ("first", "completed"),
        ("second", "failed"),
    ]


def test_final_statuses_update_a_sharded_stats_row(conn: Conn, tenant: str) -> None:
    ok = install(conn, tenant, {"slug": "ok", "steps": [{"id": "s", "set": {"a": 1}}]})
    ids = [start(conn, tenant, ok) for _ in range(20)]
    stats = conn.execute(
        "select shard, completed, failed from conveyor.workflow_stats where workflow_id = %s order by shard",
        (ok[0],),
    ).fetchall()
    assert sum(s["completed"] for s in stats) == 20
    assert len(ids) == 20
    pid = conn.execute("select pg_backend_pid() as pid").fetchone()
    assert pid is not None
    assert {s["shard"] for s in stats} == {pid["pid"] % 16}  # the writing backend's shard
    assert all(s["failed"] == 0 for s in stats)


def test_an_execution_is_run_once_even_when_named_twice(conn: Conn, tenant: str) -> None:
    wf = install(conn, tenant, {"slug": "once", "steps": [{"id": "tell", "emit": {"event": "a.b.c"}}]})
    eid = start(conn, tenant, wf, run=False)
    assert conn.execute(
        "select conveyor.run_executions(array[%s, %s]::bigint[]) as n", (eid, eid)
    ).fetchone() == {"n": 1}
    assert conn.execute("select conveyor.run_executions(array[%s]::bigint[]) as n", (eid,)).fetchone() == {
        "n": 0
    }
    assert conn.execute("select count(*) as n from conveyor.events").fetchone() == {"n": 1}


def test_published_workflow_runs_from_a_dispatched_event(conn: Conn, tenant: str) -> None:
    doc = {
        "slug": "welcome",
        "name": "Welcome",
        "trigger": {"event": "crm.contact.created"},
        "steps": [
            {"id": "hello", "set": {"who": "{{trigger.payload.new.email}}"}},
            {
                "id": "mail",
                "action": "email.send",
                "with": {"to": "{{vars.who}}", "subject": "Hi {{trigger.entity_id}}", "text": "Welcome"},
            },
        ],
    }
    conn.execute("select * from conveyor.publish('acme', %s)", (Jsonb(doc),))
    conn.execute(
        "select conveyor.emit('acme', 'crm.contact.created', %s, 'contact', 'c9')",
        (Jsonb({"new": {"email": "ada@acme.test"}}),),
    )
    conn.execute("select conveyor.dispatch()")
    [e] = conn.execute("select * from conveyor.executions").fetchall()
    assert (e["status"], e["wait_kind"], e["current_step"]) == ("waiting", "action", "mail")
    [msg] = queued_messages(conn)
    assert msg["message"]["input"] == {"to": "ada@acme.test", "subject": "Hi c9", "text": "Welcome"}
    assert msg["message"]["idempotency_key"] == f"{e['execution_id']}:mail:1"
