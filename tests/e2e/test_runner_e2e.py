"""The runner as a real process against real Postgres and a real local HTTP server:
event → dispatch → queued action → runner → write-back → completed execution."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from conveyor import connections as conns
from conveyor.secrets import SecretBox
from tests.e2e.helpers import KEY, Conn, all_final, emit, executions, publish, setup_tenant
from tests.runner.helpers import LocalHTTP, Received, Reply, local_http, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def server() -> Iterator[LocalHTTP]:
    with local_http() as s:
        yield s


def step_runs(conn: Conn) -> list[dict[str, Any]]:
    return conn.execute("select * from conveyor.step_runs order by step_run_id").fetchall()


def test_an_event_runs_its_webhook_through_the_runner(conn: Conn, server: LocalHTTP, runners: Any) -> None:
    tenant = setup_tenant(conn)
    server.routes["/hook"] = Reply(status=200, body={"thanks": True})
    publish(
        conn,
        tenant,
        {
            "action": "webhook.send",
            "with": {"url": server.url("/hook"), "body": {"name": "{{trigger.payload.name}}"}},
        },
    )
    emit(conn, tenant, {"name": "Ada"})
    runner = runners()
    [execution] = wait_for(lambda: all_final(conn, 1))
    assert execution["status"] == "completed", execution["error"]
    assert execution["step_outputs"]["notify"]["output"]["body"] == {"thanks": True}
    [received] = server.requests_to("/hook")
    assert received.json() == {"name": "Ada"}
    [run] = step_runs(conn)
    assert run["status"] == "completed" and received.headers["idempotency-key"] == run["idempotency_key"]
    assert runner.stop() == 0
    performed = [line for line in runner.lines() if line["msg"] == "action succeeded"]
    assert performed[0]["tenant"] == tenant and performed[0]["step"] == "notify"
    assert performed[0]["action"] == "webhook.send" and performed[0]["attempt"] == 1
    assert performed[0]["execution"] == execution["execution_id"] and "duration_ms" in performed[0]


def test_a_retryable_failure_is_retried_with_the_same_key_and_a_permanent_one_fails(
    conn: Conn, server: LocalHTTP, runners: Any
) -> None:
    tenant = setup_tenant(conn)
    answers = iter([Reply(status=503, headers={"Retry-After": "1"}), Reply(status=200, body="ok")])
    server.routes["/flaky"] = lambda r: next(answers)
    server.routes["/gone"] = Reply(status=404, body="no such hook")
    retry = {"attempts": 3, "initial": "1s", "backoff": "fixed"}
    publish(
        conn,
        tenant,
        {"action": "webhook.send", "with": {"url": server.url("/flaky")}, "retry": retry},
        "flaky",
    )
    publish(
        conn, tenant, {"action": "webhook.send", "with": {"url": server.url("/gone")}, "retry": retry}, "gone"
    )
    emit(conn, tenant, {})
    runners()
    rows = wait_for(lambda: all_final(conn, 2), timeout=30)
    by_workflow = {r["workflow_id"]: r for r in rows}
    statuses = sorted(r["status"] for r in by_workflow.values())
    assert statuses == ["completed", "failed"]
    flaky = server.requests_to("/flaky")
    assert len(flaky) == 2 and flaky[0].headers["idempotency-key"] == flaky[1].headers["idempotency-key"]
    assert len(server.requests_to("/gone")) == 1  # permanent: never retried
    runs = {(r["execution_id"], r["attempt"]): r["status"] for r in step_runs(conn)}
    assert sorted(runs.values()) == ["completed", "failed", "failed"]


def test_secrets_reach_the_receiver_but_never_the_database_or_the_logs(
    conn: Conn, server: LocalHTTP, runners: Any
) -> None:
    tenant = setup_tenant(conn)
    token = "Bearer sk_live_e2e_0123456789"
    conns.add(
        conn, SecretBox(KEY), tenant_id=tenant, name="crm", kind="webhook",
        config={"allowed_hosts": [server.url("")]}, secret={"headers": {"Authorization": token}},
    )  # fmt: skip
    # the receiver echoes the request (headers included) in its answer and then fails with it
    answers = iter([500, 200])
    server.routes["/echo"] = lambda r: Reply(status=next(answers), body={"seen": r.headers})
    publish(
        conn, tenant,
        {"action": "webhook.send", "connection": "crm", "with": {"url": server.url("/echo")}, "retry": {"attempts": 2, "initial": "1s"}},
    )  # fmt: skip
    emit(conn, tenant, {})
    runner = runners()
    [execution] = wait_for(lambda: all_final(conn, 1), timeout=30)
    assert execution["status"] == "completed"
    assert [r.headers["authorization"] for r in server.requests_to("/echo")] == [token, token]
    assert runner.stop() == 0
    stored = json.dumps(
        [executions(conn), step_runs(conn), conn.execute("select * from conveyor.execution_logs").fetchall()],
        default=str,
    )
    assert "sk_live_e2e_0123456789" not in stored
    assert "[redacted]" in stored
    assert "sk_live_e2e_0123456789" not in runner.log_path.read_text()


def test_sigkill_mid_batch_redelivers_after_the_visibility_timeout_and_completes_each_step_once(
    conn: Conn, server: LocalHTTP, runners: Any
) -> None:
    tenant = setup_tenant(conn)
    first_delivery = threading.Event()
    lock = threading.Lock()
    seen: dict[str, int] = {}

    def hook(received: Received) -> Reply:
        key = received.headers["idempotency-key"]
        with lock:
            seen[key] = seen.get(key, 0) + 1
            first = seen[key] == 1
        if first:
            first_delivery.set()
            return Reply(status=200, delay_s=8.0)  # the runner is killed while waiting for this
        return Reply(status=200, body={"delivery": 2})

    server.routes["/slow"] = hook
    publish(conn, tenant, {"action": "webhook.send", "with": {"url": server.url("/slow")}, "timeout": "2s"})
    for n in range(3):
        emit(conn, tenant, {"n": n})
    victim = runners(CONVEYOR_VISIBILITY_MARGIN="1", CONVEYOR_BATCH_SIZE="10")
    wait_for(lambda: len(server.requests_to("/slow")) == 3, timeout=20)
    killed_at = time.monotonic()
    victim.proc.kill()
    assert victim.proc.wait(timeout=10) == -signal.SIGKILL
    survivor = runners(CONVEYOR_VISIBILITY_MARGIN="1")
    rows = wait_for(lambda: all_final(conn, 3), timeout=30)
    assert [r["status"] for r in rows] == ["completed"] * 3
    requests = server.requests_to("/slow")
    assert len(requests) == 6
    # redelivered only once the visibility timeout (timeout 2 s + margin 1 s) had passed
    for key in seen:
        first, second = (r.at for r in requests if r.headers["idempotency-key"] == key)
        assert second - first >= 2.0
        assert second >= killed_at
    assert sorted(seen.values()) == [2, 2, 2]  # each action twice, with its one stable key
    runs = step_runs(conn)
    assert len(runs) == 3 and all(r["status"] == "completed" and r["attempt"] == 1 for r in runs)
    assert {r["idempotency_key"] for r in runs} == set(seen)
    assert all(r["output"]["body"] == {"delivery": 2} for r in runs)
    assert survivor.stop() == 0
    with conn.cursor() as cur:
        left = cur.execute("select count(*) as n from pgmq.q_conveyor_actions").fetchone()
    assert left == {"n": 0}


def test_sigterm_finishes_in_flight_actions_writes_them_back_and_exits_0(
    conn: Conn, server: LocalHTTP, runners: Any
) -> None:
    tenant = setup_tenant(conn)
    server.routes["/slow"] = Reply(status=200, body="done", delay_s=1.5)
    publish(conn, tenant, {"action": "webhook.send", "with": {"url": server.url("/slow")}})
    emit(conn, tenant, {})
    runner = runners(CONVEYOR_SHUTDOWN_GRACE="10")
    wait_for(lambda: server.requests_to("/slow"))
    assert runner.stop(signal.SIGTERM) == 0
    [execution] = executions(conn)
    assert execution["status"] == "completed"
    assert len(server.requests_to("/slow")) == 1
    messages = [line["msg"] for line in runner.lines()]
    assert messages.index("stopping") < messages.index("action succeeded") < messages.index("runner stopped")
    assert conn.execute("select stopped_at is not null as stopped from conveyor.runners").fetchone() == {
        "stopped": True
    }


def test_two_runners_perform_each_action_exactly_once(conn: Conn, server: LocalHTTP, runners: Any) -> None:
    tenant = setup_tenant(conn)
    server.routes["/once"] = Reply(status=200, delay_s=0.05)
    publish(conn, tenant, {"action": "webhook.send", "with": {"url": server.url("/once")}})
    for n in range(40):
        emit(conn, tenant, {"n": n})
    first, second = runners(CONVEYOR_BATCH_SIZE="4"), runners(CONVEYOR_BATCH_SIZE="4")
    rows = wait_for(lambda: all_final(conn, 40), timeout=60)
    assert all(r["status"] == "completed" for r in rows)
    keys = [r.headers["idempotency-key"] for r in server.requests_to("/once")]
    assert len(keys) == 40 and len(set(keys)) == 40
    assert first.stop() == 0 and second.stop() == 0
    done = [sum(1 for line in r.lines() if line["msg"] == "action succeeded") for r in (first, second)]
    assert sum(done) == 40


def test_the_runner_reconnects_after_losing_its_database_connections(
    conn: Conn, server: LocalHTTP, runners: Any
) -> None:
    tenant = setup_tenant(conn)
    publish(conn, tenant, {"action": "webhook.send", "with": {"url": server.url("/after")}})
    runner = runners()
    wait_for(runner.ready)
    killed = conn.execute(
        "select count(pg_terminate_backend(pid)) as n from pg_stat_activity where application_name = 'conveyor-runner'"
    ).fetchone()
    assert killed is not None and killed["n"] >= 1
    emit(conn, tenant, {})
    [execution] = wait_for(lambda: all_final(conn, 1), timeout=30)
    assert execution["status"] == "completed"
    assert runner.stop() == 0
    messages = [line["msg"] for line in runner.lines()]
    assert "database unavailable; retrying" in messages and "reconnected" in messages


def test_a_slow_action_keeps_its_lease_so_a_second_runner_never_repeats_it(conn: Conn, runners: Any) -> None:
    """Each SMTP command answers within the 2 s timeout, but the whole send takes ~4.5 s,
    longer than the first visibility timeout (2 s + 1 s margin): the runner renews it."""
    import asyncio

    from aiosmtpd.controller import Controller

    from tests.conftest import free_port

    deliveries: list[list[str]] = []

    class SlowMailbox:
        async def handle_RCPT(
            self, server: Any, session: Any, envelope: Any, address: str, options: Any
        ) -> str:
            await asyncio.sleep(1.5)
            envelope.rcpt_tos.append(address)
            return "250 OK"

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            deliveries.append(list(envelope.rcpt_tos))
            return "250 OK"

    port = free_port()
    controller = Controller(SlowMailbox(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        tenant = setup_tenant(conn)
        conns.add(
            conn, None, tenant_id=tenant, name="mail", kind="smtp",
            config={"host": "127.0.0.1", "port": port, "security": "none", "from": "crm@acme.test"}, secret={},
        )  # fmt: skip
        publish(
            conn, tenant,
            {
                "action": "email.send", "connection": "mail", "timeout": "2s",
                "with": {"to": "a@example.com", "cc": ["b@example.com", "c@example.com"], "subject": "s", "text": "t"},
            },
        )  # fmt: skip
        emit(conn, tenant, {})
        first = runners(CONVEYOR_VISIBILITY_MARGIN="1")
        second = runners(CONVEYOR_VISIBILITY_MARGIN="1")
        [execution] = wait_for(lambda: all_final(conn, 1), timeout=30)
        time.sleep(4)  # long enough for a second delivery, had the lease lapsed
        assert execution["status"] == "completed", execution["error"]
        assert deliveries == [["a@example.com", "b@example.com", "c@example.com"]]
        assert first.stop() == 0 and second.stop() == 0
    finally:
        controller.stop()


def test_notifications_wake_the_runner_without_waiting_for_the_poll(
    conn: Conn, server: LocalHTTP, runners: Any
) -> None:
    tenant = setup_tenant(conn)
    publish(conn, tenant, {"action": "webhook.send", "with": {"url": server.url("/event")}})
    runner = runners(CONVEYOR_POLL_INTERVAL="60")
    wait_for(runner.ready)
    time.sleep(1.0)  # past the first poll: from now on only notifications wake it

    # conveyor_wakeup (sent by emit) → tick → dispatch → action queued → performed
    emit(conn, tenant, {})
    [execution] = wait_for(lambda: all_final(conn, 1), timeout=10)
    assert execution["status"] == "completed"

    # the actions channel alone (what conveyor.send_actions notifies): a message sent
    # straight to the queue is performed; no step run exists for it, so the write-back
    # keeps it as a dead letter (docs/queue.md) and archives it
    message = {
        "step_run_id": 999999, "execution_id": 999999, "tenant_id": tenant, "workflow_id": 1,
        "step_id": "direct", "action": "webhook.send", "connection": None,
        "input": {"url": server.url("/direct")}, "idempotency_key": "999999:direct:1", "attempt": 1, "timeout_s": 5,
    }  # fmt: skip
    with conn.transaction():
        conn.execute("select pgmq.send('conveyor_actions', %s)", (Jsonb(message),))
        conn.execute("select pg_notify('conveyor_actions', 'queued')")
    [received] = wait_for(lambda: server.requests_to("/direct"), timeout=10)
    assert received.headers["idempotency-key"] == "999999:direct:1"
    wait_for(
        lambda: conn.execute("select count(*) as n from pgmq.q_conveyor_actions").fetchone() == {"n": 0},
        timeout=10,
    )
    dead = conn.execute("select reason, step_run_id from conveyor.dead_letters").fetchall()
    assert dead == [{"reason": "step_run_gone", "step_run_id": None}]
    assert runner.stop() == 0
    kept = [line for line in runner.lines() if line["msg"] == "dead letter kept"]
    assert [line["step_run"] for line in kept] == [999999]


def test_an_event_committed_without_a_notification_is_dispatched_on_the_poll(
    conn: Conn, server: LocalHTTP, runners: Any
) -> None:
    # The listener dispatches (the loop's ticks leave events to it): on a notification, and
    # after CONVEYOR_POLL_INTERVAL without one, so an event whose NOTIFY never came (written
    # by hand here) still starts its workflow.
    tenant = setup_tenant(conn)
    publish(conn, tenant, {"action": "webhook.send", "with": {"url": server.url("/polled")}})
    runner = runners(CONVEYOR_POLL_INTERVAL="0.3")
    wait_for(runner.ready)
    time.sleep(0.5)
    conn.execute(
        "insert into conveyor.events (tenant_id, event_type, source, payload)"
        " values (%s, 'crm.contact.created', 'crm', '{}')",
        (tenant,),
    )
    [execution] = wait_for(lambda: all_final(conn, 1), timeout=10)
    assert execution["status"] == "completed"
    assert len(server.requests_to("/polled")) == 1
    assert runner.stop() == 0


def test_a_result_waiting_for_a_slow_write_back_keeps_its_message_invisible(
    db_url: str, conn: Conn, server: LocalHTTP, runners: Any
) -> None:
    """The action is done in a second, but its write-back then waits (here: behind a lock on
    the execution) for longer than the message's visibility timeout. The runner keeps
    renewing the finished action's lease until the result is written, so no runner performs
    the action a second time."""
    tenant = setup_tenant(conn)
    server.routes["/slow-write"] = Reply(status=200, body="ok", delay_s=1.0)
    step = {"action": "webhook.send", "timeout": "2s", "with": {"url": server.url("/slow-write")}}
    publish(conn, tenant, step)
    # visibility: timeout 2 s + margin 2 s; renewed when less than 1 s is left
    runner = runners(CONVEYOR_VISIBILITY_MARGIN="2", CONVEYOR_POLL_INTERVAL="0.2")
    wait_for(runner.ready)
    with psycopg.connect(db_url) as blocker:
        emit(conn, tenant, {})
        wait_for(lambda: [e for e in executions(conn) if e["status"] == "waiting"], timeout=10)
        # while the action runs, hold the execution's row: write_back locks it first, so
        # the result waits for us once the action is done
        blocker.execute("select 1 from conveyor.executions for update")
        time.sleep(10)  # well past the 4 s visibility timeout
        assert len(server.requests_to("/slow-write")) == 1
        blocker.rollback()
    [execution] = wait_for(lambda: all_final(conn, 1), timeout=15)
    assert execution["status"] == "completed"
    assert len(server.requests_to("/slow-write")) == 1
    read_counts = conn.execute("select read_ct from pgmq.a_conveyor_actions").fetchall()
    assert read_counts == [{"read_ct": 1}]
    assert runner.stop() == 0


def test_a_postgres_restart_mid_action_loses_nothing(
    db_url: str, conn: Conn, server: LocalHTTP, runners: Any, pg_server: Any
) -> None:
    """The action finishes while the database is down; the runner reconnects with backoff
    and writes the result back then (no second delivery: its lease had not lapsed)."""
    tenant = setup_tenant(conn)
    server.routes["/during"] = Reply(status=200, body="ok", delay_s=2.0)
    publish(conn, tenant, {"action": "webhook.send", "with": {"url": server.url("/during")}})
    emit(conn, tenant, {})
    runner = runners()
    wait_for(lambda: server.requests_to("/during"))
    pg_server.cluster.stop()
    time.sleep(3.0)  # the action completes while the database is down
    pg_server.cluster.start()
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as fresh:
        [execution] = wait_for(lambda: all_final(fresh, 1), timeout=40)
    assert execution["status"] == "completed"
    assert len(server.requests_to("/during")) == 1
    assert runner.stop() == 0
    messages = [line["msg"] for line in runner.lines()]
    assert "database unavailable; retrying" in messages and "reconnected" in messages


def test_a_missing_connection_fails_the_step_permanently_and_says_why(
    conn: Conn, server: LocalHTTP, runners: Any
) -> None:
    tenant = setup_tenant(conn)
    publish(
        conn, tenant,
        {"action": "slack.send", "connection": "team-chat", "with": {"text": "hi"}, "retry": {"attempts": 3}},
    )  # fmt: skip
    emit(conn, tenant, {})
    runner = runners()
    [execution] = wait_for(lambda: all_final(conn, 1), timeout=20)
    assert execution["status"] == "failed"
    assert "tenant 'acme' has no connection named 'team-chat'" in execution["error"]["message"]
    assert len(step_runs(conn)) == 1  # permanent: not retried
    assert runner.stop() == 0


def test_chaos_runners_killed_at_random_lose_nothing_and_complete_each_step_once(
    conn: Conn, server: LocalHTTP, runners: Any
) -> None:
    import random

    tenant = setup_tenant(conn)
    server.routes["/chaos"] = Reply(status=200, delay_s=0.3)
    publish(conn, tenant, {"action": "webhook.send", "with": {"url": server.url("/chaos")}, "timeout": "2s"})
    for n in range(30):
        emit(conn, tenant, {"n": n})
    settings = {"CONVEYOR_VISIBILITY_MARGIN": "1", "CONVEYOR_BATCH_SIZE": "3", "CONVEYOR_CONCURRENCY": "3"}
    alive = [runners(**settings), runners(**settings)]
    rng = random.Random(4)
    for _ in range(6):
        time.sleep(rng.uniform(0.5, 1.5))
        victim = alive.pop(rng.randrange(len(alive)))
        victim.proc.kill()
        victim.proc.wait()
        alive.append(runners(**settings))
    rows = wait_for(lambda: all_final(conn, 30), timeout=90)
    assert all(r["status"] == "completed" for r in rows)
    runs = step_runs(conn)
    assert len(runs) == 30 and all(r["status"] == "completed" for r in runs)
    delivered = {r.headers["idempotency-key"] for r in server.requests_to("/chaos")}
    assert delivered == {r["idempotency_key"] for r in runs}  # at least once, always with its own key
    # nothing is left behind: a message a killed runner held reappears after its visibility
    # timeout and is consumed (a duplicate completion is ignored by the write-back)
    wait_for(
        lambda: conn.execute("select count(*) as n from pgmq.q_conveyor_actions").fetchone() == {"n": 0},
        timeout=20,
    )
    for runner in alive:
        # a runner started just now may not have installed its SIGTERM handler yet
        wait_for(runner.ready, timeout=30)
        assert runner.stop() == 0
    assert [r["status"] for r in step_runs(conn)] == ["completed"] * 30


def test_without_the_write_back_function_the_runner_reads_nothing(
    conn: Conn, server: LocalHTTP, runners: Any
) -> None:
    """A database whose engine functions are older than the runner: no action is taken
    from the queue, because its result could not be reported."""
    conn.execute("drop function conveyor.write_back(jsonb)")
    message = {
        "step_run_id": 1,
        "action": "webhook.send",
        "input": {"url": server.url("/never")},
        "timeout_s": 5,
    }
    conn.execute("select pgmq.send('conveyor_actions', %s)", (Jsonb(message),))
    runner = runners()
    wait_for(lambda: any("write_back() does not exist" in line["msg"] for line in runner.lines()))
    time.sleep(1.0)
    assert runner.stop() == 0
    assert server.received == []
    with conn.cursor() as cur:
        assert cur.execute("select read_ct from pgmq.q_conveyor_actions").fetchall() == [{"read_ct": 0}]


def test_metrics_and_health_are_served_when_configured(conn: Conn, server: LocalHTTP, runners: Any) -> None:
    import httpx

    from tests.conftest import free_port

    tenant = setup_tenant(conn)
    server.routes["/gone"] = Reply(status=404)
    publish(conn, tenant, {"action": "webhook.send", "with": {"url": server.url("/ok")}}, "ok")
    publish(conn, tenant, {"action": "webhook.send", "with": {"url": server.url("/gone")}}, "gone")
    emit(conn, tenant, {})
    address = f"127.0.0.1:{free_port()}"
    runner = runners(CONVEYOR_METRICS_ADDRESS=address)
    wait_for(lambda: all_final(conn, 2), timeout=20)

    def scrape() -> str | None:
        try:
            text = httpx.get(f"http://{address}/metrics", timeout=2).text
        except httpx.HTTPError:
            return None
        return text if "conveyor_runner_write_backs_total" in text else None

    text = wait_for(scrape)
    assert 'conveyor_runner_actions_total{action="webhook.send",outcome="succeeded"} 1' in text
    assert 'conveyor_runner_actions_total{action="webhook.send",outcome="permanent"} 1' in text
    assert 'conveyor_runner_write_backs_total{outcome="applied"} 2' in text
    assert "conveyor_runner_database_connected 1" in text
    assert httpx.get(f"http://{address}/healthz", timeout=2).status_code == 200
    assert runner.stop() == 0


def test_the_runner_works_as_the_service_role_not_only_as_a_superuser(
    db_url: str, conn: Conn, server: LocalHTTP, runners: Any
) -> None:
    """A runner logged in as a plain member of conveyor_service (neither superuser nor
    BYPASSRLS) switches to that role, so row-level security does not hide its work."""
    from psycopg.conninfo import make_conninfo

    conn.execute(
        "do $$ begin if not exists (select from pg_roles where rolname = 'runner_test') then"
        " create role runner_test login in role conveyor_service; end if; end $$"
    )
    tenant = setup_tenant(conn)
    conns.add(
        conn, SecretBox(KEY), tenant_id=tenant, name="crm", kind="webhook",
        config={"allowed_hosts": [server.url("")]}, secret={"signing_secret": "whsec_service_role"},
    )  # fmt: skip
    publish(
        conn, tenant, {"action": "webhook.send", "connection": "crm", "with": {"url": server.url("/svc")}}
    )
    emit(conn, tenant, {})
    runner = runners(CONVEYOR_DATABASE_URL=make_conninfo(db_url, user="runner_test"))
    try:
        [execution] = wait_for(lambda: all_final(conn, 1), timeout=20)
    except AssertionError:
        activity = conn.execute(
            "select state, wait_event_type, wait_event, left(query, 200) as query from pg_stat_activity"
            " where usename = 'runner_test'"
        ).fetchall()
        raise AssertionError(runner.log_path.read_text()[-3000:] + repr(activity)) from None
    assert execution["status"] == "completed", execution["error"]
    assert "x-conveyor-signature" in server.requests_to("/svc")[0].headers
    assert runner.stop() == 0
    assert not [line for line in runner.lines() if line["level"] == "error"]
