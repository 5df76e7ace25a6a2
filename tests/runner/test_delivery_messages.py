"""A notification delivery's message in the runner: checked like a step's (it names a
delivery_id where a step's names a step_run_id), and its result written back through
conveyor.write_back_deliveries while the step results of the same batch go to
conveyor.write_back, against a real database."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from conveyor import queue as q
from conveyor.actions import Outcome
from conveyor.runner import Runner, RunnerConfig
from conveyor.runner.shared import Finished
from conveyor.runner.writer import result_of
from tests.sql.interpreter_helpers import execution, flow, make_tenant, start
from tests.sql.notification_helpers import channels, deliveries, notify, platform_users

Conn = psycopg.Connection[dict[str, Any]]

DELIVERY = {
    "delivery_id": 4,
    "tenant_id": "acme",
    "action": "email.send",
    "connection": "mail",
    "input": {"to": "ann@acme.test", "subject": "s", "text": "t"},
    "idempotency_key": "notification-delivery:4",
    "attempt": 1,
    "timeout_s": 30,
}


def test_a_delivery_message_is_performed_and_names_its_delivery() -> None:
    message = q.Message(msg_id=9, read_ct=1, raw=DELIVERY)
    assert message.verdict() is None
    assert (message.delivery_id, message.step_run_id) == (4, None)
    assert message.log_fields()["notification_delivery"] == 4
    finished = Finished(message, Outcome(ok=False, output=None, retryable=True, error={"message": "x"}), 3)
    assert result_of(finished) == {
        "msg_id": 9, "delivery_id": 4, "ok": False, "output": None, "retryable": True, "retry_after_s": None,
        "error": {"message": "x"},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (DELIVERY | {"delivery_id": "4"}, 'delivery_id "4" is not a delivery id (a positive whole number)'),
        (DELIVERY | {"delivery_id": 0}, "delivery_id 0 is not a delivery id (a positive whole number)"),
        (DELIVERY | {"action": None}, "action missing is not a non-empty string"),
    ],
)
def test_a_malformed_delivery_message_is_dead_lettered(raw: dict[str, Any], problem: str) -> None:
    message = q.Message(msg_id=1, read_ct=1, raw=raw)
    assert message.problem() == problem
    assert message.delivery_id is None or problem.startswith("action")


def test_one_batch_of_a_step_result_and_a_delivery_result_is_written_to_both(conn: Conn, db_url: str) -> None:
    tenant = make_tenant(conn)
    platform_users(conn, [(tenant, "ann", "ann@acme.test", None, None)])
    channels(conn, tenant)
    notify(conn, tenant, "ann", {"title": "Hello"})
    execution_id = start(conn, tenant, flow(conn, tenant), {"payload": {"amount": 1}})
    runner = Runner(RunnerConfig(db_url, visibility_margin=1.0))
    with psycopg.connect(db_url, autocommit=True) as runner_conn:
        messages = q.read_batch(runner_conn, 10, 1.0)
        assert sorted(m.delivery_id is not None for m in messages) == [False, True]
        batch = [Finished(m, Outcome(ok=True, output={"status": 200}), 1) for m in messages]
        runner.writer.write(runner_conn, batch)
    assert execution(conn, execution_id)["status"] == "completed"
    assert [d["status"] for d in deliveries(conn)] == ["sent"]
    assert conn.execute("select count(*) as n from pgmq.q_conveyor_actions").fetchone() == {"n": 0}
