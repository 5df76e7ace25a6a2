"""The action queue against hostile data, with a real runner process, real PostgreSQL and a
real local HTTP server: no side effect is repeated for want of a result, no message stops
the runner or the queue, a message that can never complete becomes a dead letter an
operator can requeue (docs/queue.md), and a retry starts when its backoff ends."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.e2e.helpers import all_final, emit, executions, publish, setup_tenant
from tests.runner.helpers import LocalHTTP, Received, Reply, local_http, wait_for

Conn = psycopg.Connection[dict[str, Any]]

pytestmark = pytest.mark.slow

# The action's timeout and the runner's margin: a message whose result is not written back
# is visible again after 2 s, so a repeat would show within the waits below.
FAST_REDELIVERY = {"CONVEYOR_VISIBILITY_MARGIN": "1"}


@pytest.fixture
def server() -> Iterator[LocalHTTP]:
    with local_http() as s:
        yield s


def hook(server: LocalHTTP, path: str, **step: Any) -> dict[str, Any]:
    return {"action": "webhook.send", "with": {"url": server.url(path), "body": {}}, "timeout": "1s", **step}


def dead_letters(conn: Conn) -> list[dict[str, Any]]:
    return conn.execute("select * from conveyor.dead_letters order by dead_letter_id").fetchall()


@pytest.mark.parametrize(
    ("answer", "content_type", "stored"),
    [
        (b'{"ok":"a\\u0000b"}', "application/json", {"ok": "a\ufffdb"}),
        (b"a\x00b", "text/plain", "a\ufffdb"),
        (b'{"s":"\\ud800"}', "application/json", {"s": "\ufffd"}),
        (b'{"n":NaN}', "application/json", {"n": None}),
    ],
    ids=["json-nul", "text-nul", "lone-surrogate", "nan"],
)
def test_an_answer_jsonb_refuses_is_stored_sanitised_and_the_post_is_performed_once(
    conn: Conn, server: LocalHTTP, ready_runners: Any, answer: bytes, content_type: str, stored: Any
) -> None:
    tenant = setup_tenant(conn)
    server.routes["/nul"] = Reply(status=200, body=answer, headers={"Content-Type": content_type})
    publish(conn, tenant, hook(server, "/nul"))
    runner = ready_runners(**FAST_REDELIVERY)
    emit(conn, tenant, {})
    [execution] = wait_for(lambda: all_final(conn, 1))
    assert execution["status"] == "completed", execution["error"]
    assert execution["step_outputs"]["notify"]["output"]["body"] == stored
    time.sleep(4.0)  # two visibility timeouts: a message left unwritten would be performed again
    assert len(server.requests_to("/nul")) == 1
    assert dead_letters(conn) == []
    assert runner.stop() == 0


def test_an_oversize_answer_is_stored_truncated_with_a_marker(
    conn: Conn, server: LocalHTTP, ready_runners: Any
) -> None:
    tenant = setup_tenant(conn)
    server.routes["/big"] = Reply(status=200, body="y" * 60_000, headers={"Content-Type": "text/plain"})
    publish(conn, tenant, hook(server, "/big"))
    ready_runners(CONVEYOR_MAX_OUTPUT_BYTES="8192")
    emit(conn, tenant, {})
    [execution] = wait_for(lambda: all_final(conn, 1))
    assert execution["status"] == "completed", execution["error"]
    output = execution["step_outputs"]["notify"]["output"]
    assert output["status"] == 200
    assert output["body"].startswith("y" * 1000)
    assert output["body"].endswith("over the limit of 8192 (CONVEYOR_MAX_OUTPUT_BYTES)]")
    assert len(json.dumps(output)) <= 8192


def test_malformed_messages_are_dead_lettered_and_the_runner_and_queue_go_on(
    conn: Conn, server: LocalHTTP, ready_runners: Any
) -> None:
    tenant = setup_tenant(conn)
    publish(conn, tenant, hook(server, "/real"))
    ghost = {
        "step_run_id": 987654, "execution_id": 987654, "tenant_id": tenant, "workflow_id": 1, "step_id": "ghost",
        "action": "webhook.send", "connection": None, "input": {"url": server.url("/ghost")},
        "idempotency_key": "987654:ghost:1", "attempt": 1, "timeout_s": 1,
    }  # fmt: skip
    bad: list[Any] = [[1, 2], "a string", {"timeout_s": 1e300}, {"step_run_id": "abc"}]
    for body in bad:
        conn.execute("select pgmq.send('conveyor_actions', %s)", (Jsonb(body),))
    # delivered before, and its step run no longer exists: not performed again
    conn.execute("select pgmq.send('conveyor_actions', %s)", (Jsonb(ghost),))
    conn.execute("update pgmq.q_conveyor_actions set read_ct = 1 where message ->> 'step_id' = 'ghost'")
    emit(conn, tenant, {})
    runner = ready_runners()
    [execution] = wait_for(lambda: all_final(conn, 1))
    assert execution["status"] == "completed"
    assert len(server.requests_to("/real")) == 1
    wait_for(lambda: len(dead_letters(conn)) == 5)
    reasons = [d["reason"] for d in sorted(dead_letters(conn), key=lambda d: d["msg_id"])]
    assert reasons == ["malformed_message"] * 4 + ["step_run_gone"]
    assert server.requests_to("/ghost") == []
    assert conn.execute("select count(*) as n from pgmq.q_conveyor_actions").fetchone() == {"n": 0}
    # and the runner serves on
    emit(conn, tenant, {})
    wait_for(lambda: all_final(conn, 2))
    assert runner.proc.poll() is None
    assert runner.stop() == 0


def cli(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor.cli", "actions", *args, "--tenant", "acme"],
        env={**os.environ, "CONVEYOR_DATABASE_URL": db_url, "COLUMNS": "250"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_message_delivered_too_often_becomes_a_dead_letter_the_operator_requeues(
    conn: Conn, db_url: str, server: LocalHTTP, ready_runners: Any
) -> None:
    tenant = setup_tenant(conn)
    publish(conn, tenant, hook(server, "/flaky"))
    emit(conn, tenant, {})
    conn.execute("select conveyor.dispatch()")
    # five deliveries that never got a result (a runner killed while performing it, say)
    conn.execute("update pgmq.q_conveyor_actions set read_ct = 5")
    runner = ready_runners()
    [execution] = wait_for(lambda: all_final(conn, 1))
    assert execution["status"] == "failed"
    assert "delivered 5 times without a result" in execution["error"]["message"]
    assert server.requests_to("/flaky") == []  # not performed a sixth time

    listed = cli(db_url, "dead", "--json")
    assert listed.returncode == 0, listed.stderr
    [dead] = json.loads(listed.stdout)
    assert (dead["reason"], dead["attempts"], dead["execution"], dead["step"]) == (
        "max_deliveries",
        6,
        execution["execution_id"],
        "notify",
    )
    table = cli(db_url, "dead")
    assert "max_deliveries" in table.stdout

    requeued = cli(db_url, "requeue", str(dead["id"]))
    assert requeued.returncode == 0, requeued.stderr
    assert requeued.stdout.startswith(f"dead letter {dead['id']}: requeued as message ")
    wait_for(lambda: executions(conn)[0]["status"] == "completed")
    [received] = server.requests_to("/flaky")
    assert received.headers["idempotency-key"] == f"{execution['execution_id']}:notify:1"
    assert cli(db_url, "dead", "--json").stdout.strip() == "[]"
    again = cli(db_url, "requeue", str(dead["id"]))
    assert again.returncode == 1
    assert again.stderr.strip() == f'error: dead letter {dead["id"]} does not exist for tenant "acme"'
    assert runner.stop() == 0


def test_retries_start_when_their_backoff_ends_not_at_the_next_poll(
    conn: Conn, server: LocalHTTP, ready_runners: Any
) -> None:
    """Fixed backoff of 1 s; the runner polls every 10 s, so only its wake-up at the retry's
    due time (conveyor.next_work_due_at) can start the next attempt on time. The slack:
    the gap between attempts arriving is under 1.3 s (before: 1.1 to 2.0 s with the
    default 1 s poll, up to 11 s here)."""
    tenant = setup_tenant(conn)
    answers = iter([503, 503, 200])
    server.routes["/retry"] = lambda request: Reply(status=next(answers), body={"ok": True})
    retry = {"attempts": 3, "backoff": "fixed", "initial": "1s", "jitter": False}
    publish(conn, tenant, hook(server, "/retry", retry=retry))
    ready_runners(CONVEYOR_POLL_INTERVAL="10", CONVEYOR_HEARTBEAT_INTERVAL="10")
    emit(conn, tenant, {})
    [execution] = wait_for(lambda: all_final(conn, 1), timeout=30)
    assert execution["status"] == "completed", execution["error"]
    arrivals: list[Received] = server.requests_to("/retry")
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(arrivals)]
    assert len(gaps) == 2
    assert all(0.95 <= gap < 1.3 for gap in gaps), gaps


def test_the_runner_rides_out_database_errors_and_lost_connections(
    conn: Conn, server: LocalHTTP, ready_runners: Any
) -> None:
    tenant = setup_tenant(conn)
    publish(conn, tenant, hook(server, "/alive"))
    runner = ready_runners()
    # a statement the database refuses on every turn of the loop (its heartbeat): before,
    # the runner exited with the error
    conn.execute(
        f"alter table conveyor.runners add constraint refuse_heartbeats check (pid <> {runner.proc.pid}) not valid"
    )
    wait_for(lambda: any(line["msg"] == "database error; retrying" for line in runner.lines()))
    time.sleep(1.5)
    assert runner.proc.poll() is None
    conn.execute("alter table conveyor.runners drop constraint refuse_heartbeats")
    emit(conn, tenant, {})
    wait_for(lambda: all_final(conn, 1), timeout=30)

    # its connections terminated, all of them at once, twice
    for round_ in (2, 3):
        conn.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity"
            " where application_name = 'conveyor-runner' and pid <> pg_backend_pid()"
        )
        time.sleep(0.5)
        emit(conn, tenant, {})
        wait_for(lambda n=round_: all_final(conn, n), timeout=30)
    assert len(server.requests_to("/alive")) == 3
    assert [e["status"] for e in executions(conn)] == ["completed"] * 3
    assert runner.proc.poll() is None
    assert runner.stop() == 0
    assert any(line["msg"] == "reconnected" for line in runner.lines())
