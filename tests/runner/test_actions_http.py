"""HTTP actions against a real local server: outputs, headers, signatures, failure classes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import pytest

from conveyor.actions import ActionRequest, Environment, perform
from conveyor.actions.http import MAX_BODY_BYTES, retry_after_seconds
from conveyor.connections import Connection
from tests.runner.helpers import LocalHTTP, Received, Reply, local_http


@pytest.fixture
def server() -> Iterator[LocalHTTP]:
    with local_http() as s:
        yield s


def request(
    action: str, data: dict[str, Any], connection: Connection | None = None, **kw: Any
) -> ActionRequest:
    return ActionRequest(
        action=action,
        input=data,
        idempotency_key=kw.pop("idempotency_key", "41:notify:1"),
        timeout_s=kw.pop("timeout_s", 5.0),
        connection=connection,
        tenant_id="acme",
        **kw,
    )


def test_webhook_sends_json_with_idempotency_key_and_returns_the_response(
    env: Environment, server: LocalHTTP
) -> None:
    server.routes["/hook"] = Reply(status=201, body={"received": True}, headers={"X-Trace": "abc"})
    outcome = perform(
        request(
            "webhook.send",
            {
                "url": server.url("/hook"),
                "headers": {"X-Tenant": "acme"},
                "body": {"amount": 42, "name": "Ada"},
            },
        ),
        env,
    )
    assert outcome.ok, outcome.error
    assert outcome.output is not None
    assert outcome.output["status"] == 201
    assert outcome.output["body"] == {"received": True}
    assert outcome.output["headers"]["x-trace"] == "abc"
    [received] = server.requests_to("/hook")
    assert received.method == "POST"
    assert received.json() == {"amount": 42, "name": "Ada"}
    assert received.headers["idempotency-key"] == "41:notify:1"
    assert received.headers["x-tenant"] == "acme"
    assert received.headers["content-type"] == "application/json"
    assert received.headers["host"] == f"127.0.0.1:{server.port}"
    assert "x-conveyor-signature" not in received.headers


def test_webhook_signature_is_hmac_of_timestamp_and_body(env: Environment, server: LocalHTTP) -> None:
    secret = "whsec_0123456789abcdef"
    connection = Connection(
        "acme", "crm-hook", "webhook", {"allowed_hosts": [server.url("")]}, {"signing_secret": secret}
    )
    outcome = perform(
        request("webhook.send", {"url": server.url("/signed"), "body": {"x": 1}}, connection), env
    )
    assert outcome.ok, outcome.error
    [received] = server.requests_to("/signed")
    parts = dict(p.split("=", 1) for p in received.headers["x-conveyor-signature"].split(","))
    expected = hmac.new(
        secret.encode(), f"{parts['t']}.".encode() + received.body, hashlib.sha256
    ).hexdigest()
    assert parts["v1"] == expected
    assert received.body == b'{"x":1}'


def test_webhook_uses_the_connections_default_url_and_secret_headers(
    env: Environment, server: LocalHTTP
) -> None:
    connection = Connection(
        "acme",
        "api",
        "webhook",
        {"url": server.url("/default")},
        {"headers": {"Authorization": "Bearer s3cr3t-token"}},
    )
    outcome = perform(request("webhook.send", {"method": "PUT", "body": [1, 2]}, connection), env)
    assert outcome.ok, outcome.error
    [received] = server.requests_to("/default")
    assert received.method == "PUT"
    assert received.headers["authorization"] == "Bearer s3cr3t-token"


def test_response_body_is_capped_at_64_kib(env: Environment, server: LocalHTTP) -> None:
    server.routes["/big"] = Reply(body=b"x" * (MAX_BODY_BYTES * 3))
    outcome = perform(request("webhook.send", {"url": server.url("/big")}), env)
    assert outcome.ok and outcome.output is not None
    assert len(outcome.output["body"]) == MAX_BODY_BYTES
    assert outcome.output["body_truncated"] is True


@pytest.mark.parametrize("status", [500, 502, 503, 408, 429])
def test_5xx_408_and_429_are_retryable(env: Environment, server: LocalHTTP, status: int) -> None:
    server.routes["/flaky"] = Reply(status=status, body={"error": "busy"})
    outcome = perform(request("webhook.send", {"url": server.url("/flaky"), "body": {}}), env)
    assert not outcome.ok
    assert outcome.retryable is True
    assert outcome.error is not None and outcome.error["status"] == status
    assert outcome.error["type"] == "http_status"
    assert outcome.output is not None and outcome.output["body"] == {"error": "busy"}


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422, 301])
def test_other_4xx_and_redirects_are_permanent(env: Environment, server: LocalHTTP, status: int) -> None:
    server.routes["/nope"] = Reply(status=status, headers={"Location": "http://10.0.0.1/"}, body="no")
    outcome = perform(request("webhook.send", {"url": server.url("/nope")}), env)
    assert not outcome.ok
    assert outcome.retryable is False
    assert outcome.retry_after_s is None
    # a redirect is reported, never followed (it could point anywhere)
    assert len(server.received) == 1


def test_retry_after_is_reported_in_seconds(env: Environment, server: LocalHTTP) -> None:
    server.routes["/slow-down"] = Reply(status=429, headers={"Retry-After": "120"})
    outcome = perform(request("webhook.send", {"url": server.url("/slow-down")}), env)
    assert (outcome.ok, outcome.retryable, outcome.retry_after_s) == (False, True, 120.0)


def test_retry_after_accepts_an_http_date() -> None:
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412420.0) == 60.0
    assert retry_after_seconds("garbage") is None
    assert retry_after_seconds("-5") == 0.0


def test_timeout_is_retryable(env: Environment, server: LocalHTTP) -> None:
    server.routes["/hang"] = Reply(delay_s=3.0)
    outcome = perform(request("webhook.send", {"url": server.url("/hang")}, timeout_s=0.5), env)
    assert not outcome.ok and outcome.retryable
    assert outcome.error is not None and outcome.error["type"] == "timeout"


def test_the_inputs_timeout_shortens_the_steps_timeout(env: Environment, server: LocalHTTP) -> None:
    server.routes["/hang"] = Reply(delay_s=3.0)
    outcome = perform(
        request("webhook.send", {"url": server.url("/hang"), "timeout": "300ms"}, timeout_s=30), env
    )
    assert not outcome.ok and outcome.error is not None and outcome.error["type"] == "timeout"


def test_connection_refused_is_retryable(env: Environment) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    outcome = perform(request("webhook.send", {"url": f"http://127.0.0.1:{port}/"}), env)
    assert not outcome.ok and outcome.retryable
    assert outcome.error is not None and outcome.error["type"] == "connection"


@pytest.mark.parametrize(
    ("action", "data", "message"),
    [
        ("webhook.send", {}, "input.url is required"),
        ("webhook.send", {"url": "ftp://example.com/x"}, "only http and https"),
        ("webhook.send", {"url": "http://127.0.0.1/", "method": "BREW"}, "input.method must be one of"),
        ("webhook.send", {"url": "http://127.0.0.1/", "headers": {"X": "a\r\nB: c"}}, "line breaks"),
        ("carrier.pigeon", {}, "unknown action 'carrier.pigeon'"),
        ("slack.send", {"text": "hi"}, "needs a connection of kind slack"),
    ],
)
def test_invalid_input_is_permanent(
    env: Environment, action: str, data: dict[str, Any], message: str
) -> None:
    outcome = perform(request(action, data), env)
    assert not outcome.ok and outcome.retryable is False
    assert outcome.error is not None and message in outcome.error["message"]


def test_slack_posts_the_message_to_the_connections_webhook(env: Environment, server: LocalHTTP) -> None:
    server.routes["/services/T1/B1/xyz"] = Reply(body="ok")
    connection = Connection("acme", "team", "slack", {}, {"webhook_url": server.url("/services/T1/B1/xyz")})
    outcome = perform(request("slack.send", {"text": "New lead: Ada", "channel": "#sales"}, connection), env)
    assert outcome.ok, outcome.error
    assert outcome.output == {"status": 200, "body": "ok"}
    [received] = server.requests_to("/services/T1/B1/xyz")
    assert received.json() == {"text": "New lead: Ada", "channel": "#sales"}


def test_discord_sends_text_as_content(env: Environment, server: LocalHTTP) -> None:
    server.routes["/api/webhooks/1/tok"] = Reply(status=204)
    connection = Connection(
        "acme", "guild", "discord", {}, {"webhook_url": server.url("/api/webhooks/1/tok")}
    )
    outcome = perform(request("discord.send", {"text": "Deal won", "username": "Conveyor"}, connection), env)
    assert outcome.ok, outcome.error
    [received] = server.requests_to("/api/webhooks/1/tok")
    assert received.json() == {"content": "Deal won", "username": "Conveyor"}


def twilio(server: LocalHTTP, sid: str, token: str) -> None:
    """The Twilio Messages endpoint: basic auth, form fields, 201 with the message resource."""
    path = f"/2010-04-01/Accounts/{sid}/Messages.json"

    def handle(received: Received) -> Reply:
        expected = "Basic " + base64.b64encode(f"{sid}:{token}".encode()).decode()
        if received.headers.get("authorization") != expected:
            return Reply(status=401, body={"code": 20003, "message": "Authenticate"})
        form = {k: v[0] for k, v in parse_qs(received.body.decode()).items()}
        if not form.get("To") or not form.get("Body") or not form.get("From"):
            return Reply(status=400, body={"code": 21604, "message": "A 'To' phone number is required."})
        return Reply(
            status=201,
            body={
                "sid": "SM" + "0" * 32,
                "status": "queued",
                "to": form["To"],
                "from": form["From"],
                "body": form["Body"],
            },
        )

    server.routes[path] = handle


def test_sms_follows_the_twilio_contract(env: Environment, server: LocalHTTP) -> None:
    sid, token = "AC" + "1" * 32, "auth-token-0123456789"
    twilio(server, sid, token)
    connection = Connection(
        "acme",
        "sms",
        "twilio",
        {"account_sid": sid, "from": "+15550001111", "base_url": server.url("")},
        {"auth_token": token},
    )
    outcome = perform(
        request("sms.send", {"to": "+15552223333", "body": "Your table is ready"}, connection), env
    )
    assert outcome.ok, outcome.error
    assert outcome.output == {
        "sid": "SM" + "0" * 32,
        "status": "queued",
        "to": "+15552223333",
        "from": "+15550001111",
    }
    [received] = server.received
    assert received.headers["content-type"] == "application/x-www-form-urlencoded"
    assert received.headers["i-twilio-idempotency-token"] == "41:notify:1"
    assert parse_qs(received.body.decode()) == {
        "To": ["+15552223333"],
        "From": ["+15550001111"],
        "Body": ["Your table is ready"],
    }


def test_sms_with_a_wrong_token_is_a_permanent_failure_without_the_token(
    env: Environment, server: LocalHTTP
) -> None:
    sid = "AC" + "2" * 32
    twilio(server, sid, "the-right-token")
    connection = Connection(
        "acme",
        "sms",
        "twilio",
        {"account_sid": sid, "base_url": server.url("")},
        {"auth_token": "the-wrong-token"},
    )
    outcome = perform(request("sms.send", {"to": "+1555", "body": "x", "from": "+1666"}, connection), env)
    assert not outcome.ok and outcome.retryable is False
    assert outcome.error is not None and outcome.error["status"] == 401
    assert "the-wrong-token" not in json.dumps([outcome.output, outcome.error])


def test_secrets_never_appear_in_outputs_or_errors(env: Environment, server: LocalHTTP) -> None:
    """The local server echoes every request back, secret headers and all; the output is redacted."""
    secret_header = "Bearer tok_live_abcdef123456"
    signing = "whsec_live_987654321"
    connection = Connection(
        "acme",
        "api",
        "webhook",
        {"allowed_hosts": [server.url("")]},
        {"headers": {"Authorization": secret_header}, "signing_secret": signing},
    )
    ok = perform(request("webhook.send", {"url": server.url("/echo"), "body": {"k": "v"}}, connection), env)
    server.routes["/fail"] = lambda r: Reply(status=500, body={"echo": r.headers, "again": secret_header})
    failed = perform(request("webhook.send", {"url": server.url("/fail")}, connection), env)
    for outcome in (ok, failed):
        text = json.dumps([outcome.output, outcome.error])
        assert secret_header not in text and "tok_live_abcdef123456" not in text and signing not in text
        assert "[redacted]" in text
    # the server did receive the secret: it is redacted from what the runner reports, not from the request
    assert server.requests_to("/echo")[0].headers["authorization"] == secret_header


def test_a_slack_webhook_url_is_redacted_from_connection_errors(env: Environment) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/services/T000/B000/SECRETPATH123"
    connection = Connection("acme", "team", "slack", {}, {"webhook_url": url})
    outcome = perform(request("slack.send", {"text": "hi"}, connection), env)
    assert not outcome.ok and outcome.retryable
    assert "SECRETPATH123" not in json.dumps([outcome.output, outcome.error])
