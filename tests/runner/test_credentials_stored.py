"""Through the real runner and database: a hostile tenant's steps neither send a connection's
credentials to another host nor get a derived form of a secret stored in a step's output or
error, as `conveyor executions show --json` shows them."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote

import pytest
from click.testing import CliRunner

from conveyor import connections as conns
from conveyor.cli import main
from conveyor.secrets import SecretBox
from tests.e2e.helpers import KEY, Conn, all_final, emit, publish, setup_tenant
from tests.runner.helpers import LocalHTTP, Received, Reply, wait_for

pytestmark = pytest.mark.slow

SID, TOKEN = "AC" + "5" * 32, "tw-token-e2e-8c1f0a"
SLACK_PATH = "/services/T0E2E0001/B0E2E0002/slackE2Esecret0123456"
BEARER = "Bearer sk_live_e2e_hosts_4d2b"


def echo(status: int) -> Any:
    def handle(received: Received) -> Reply:
        return Reply(status=status, body={"path": received.path, "headers": received.headers})

    return handle


def test_credentials_stay_on_their_hosts_and_no_form_of_a_secret_is_stored(
    db_url: str, conn: Conn, allowed: LocalHTTP, other: LocalHTTP, runners: Any
) -> None:
    tenant = setup_tenant(conn)
    box = SecretBox(KEY)
    conns.add(
        conn, box, tenant_id=tenant, name="sms", kind="twilio",
        config={"account_sid": SID, "base_url": allowed.url("")}, secret={"auth_token": TOKEN},
    )  # fmt: skip
    conns.add(
        conn, box, tenant_id=tenant, name="team", kind="slack", config={},
        secret={"webhook_url": allowed.url(SLACK_PATH)},
    )  # fmt: skip
    conns.add(
        conn, box, tenant_id=tenant, name="crm", kind="webhook",
        config={"url": allowed.url("/crm")}, secret={"headers": {"Authorization": BEARER}},
    )  # fmt: skip
    allowed.routes[f"/2010-04-01/Accounts/{SID}/Messages.json"] = echo(401)
    allowed.routes[SLACK_PATH] = echo(404)
    once = {"attempts": 1}
    steps = {
        "sms": {
            "action": "sms.send",
            "connection": "sms",
            "with": {"to": "+1555", "body": "x", "from": "+1666"},
        },
        "slack": {"action": "slack.send", "connection": "team", "with": {"text": "hi"}},
        "steal": {"action": "webhook.send", "connection": "crm", "with": {"url": other.url("/steal")}},
    }
    for slug, step in steps.items():
        publish(conn, tenant, {**step, "retry": once}, slug=slug)
    emit(conn, tenant, {})
    runner = runners()
    final = wait_for(lambda: all_final(conn, 3), timeout=30)
    assert runner.stop() == 0
    assert [x["status"] for x in final] == ["failed"] * 3
    assert other.received == []  # the connection's token never left for the other host

    shown = []
    for execution in final:
        result = CliRunner().invoke(
            main,
            ["executions", "show", "--tenant", tenant, "--json", str(execution["execution_id"])],
            env={"CONVEYOR_DATABASE_URL": db_url},
        )
        assert result.exit_code == 0, result.output
        shown.append(json.loads(result.output))
    text = json.dumps(shown) + runner.log_path.read_text()
    basic = base64.b64encode(f"{SID}:{TOKEN}".encode()).decode()
    secret_path = SLACK_PATH.split("/", 2)[2]
    for form in (
        TOKEN,
        basic,
        basic.rstrip("="),
        secret_path,
        quote(secret_path, safe=""),
        BEARER,
        BEARER[7:],
    ):
        assert form not in text, form
    assert '"authorization": "Basic [redacted]"' in text  # the echo was stored, redacted
    errors = {s["execution"]["execution_id"]: s["steps"][-1]["error"] for s in shown}
    messages = [errors[x["execution_id"]]["message"] for x in final]
    assert any(m == f"POST {allowed.url('/services/***')} answered HTTP 404" for m in messages), messages
    [refused] = [e for e in errors.values() if e["type"] == "host_not_allowed"]
    assert f"http://127.0.0.1:{other.port}" in refused["message"]
    assert f"allowed: http://127.0.0.1:{allowed.port}" in refused["message"]
