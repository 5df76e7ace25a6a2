"""Redaction of derived forms: a real local server echoes the request (headers, URL, body)
back in its answer and in a failure; what the action reports for the step's record (its
output and error, written back as they leave `perform`) holds no form of a secret."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conveyor.actions import REGISTRY, ActionRequest, Environment, Outcome, perform
from conveyor.connections import Connection
from conveyor.logs import JsonFormatter
from conveyor.secrets import MASK, REDACTED, Redactor, mask_query_tokens, secret_forms
from tests.runner.helpers import LocalHTTP, Received, Reply, local_http


@pytest.fixture
def server() -> Iterator[LocalHTTP]:
    with local_http() as s:
        yield s


def echo(status: int) -> Any:
    """Answer `status` with the request echoed: headers, URL, body, and the credentials
    decoded and URL-encoded the way a verbose error page might show them."""

    def handle(received: Received) -> Reply:
        authorization = received.headers.get("authorization", "")
        credential = authorization.partition(" ")[2]
        try:
            decoded = base64.b64decode(credential).decode()
        except ValueError:
            decoded = ""
        body = {
            "url": f"http://127.0.0.1{received.path}",
            "headers": received.headers,
            "error": f"invalid credential {credential} ({decoded}) for {quote(authorization, safe='')}",
            "body": received.body.decode(),
        }
        return Reply(status=status, body=body, headers={"X-Echo-Authorization": authorization})

    return handle


def authorized(server: LocalHTTP, authorization: str) -> Connection:
    """A webhook connection to the server's /fail with a secret Authorization header."""
    return Connection(
        "acme", "api", "webhook", {"url": server.url("/fail")}, {"headers": {"Authorization": authorization}}
    )


def act(env: Environment, action: str, data: dict[str, Any], connection: Connection | None) -> Outcome:
    return perform(ActionRequest(action, data, "3:step:1", 5.0, connection, "acme"), env)


def stored(outcome: Outcome) -> str:
    return json.dumps([outcome.output, outcome.error])


@pytest.mark.parametrize("status", [200, 401])
def test_sms_basic_auth_of_sid_and_token_is_redacted(
    env: Environment, server: LocalHTTP, status: int
) -> None:
    sid, token = "AC" + "7" * 32, "tw-auth-token-5f0e2d"
    server.routes[f"/2010-04-01/Accounts/{sid}/Messages.json"] = echo(status)
    connection = Connection(
        "acme", "sms", "twilio", {"account_sid": sid, "base_url": server.url("")}, {"auth_token": token}
    )
    outcome = act(env, "sms.send", {"to": "+1555", "body": "hi", "from": "+1666"}, connection)
    assert not outcome.ok  # 401, or a 200 without a message sid: the echo is in the output
    text = stored(outcome)
    basic = base64.b64encode(f"{sid}:{token}".encode()).decode()
    assert server.received[0].headers["authorization"] == f"Basic {basic}"  # the server got it
    for form in (token, basic, basic.rstrip("="), quote(basic, safe=""), f"{sid}:{token}"):
        assert form not in text, form
    assert f"Basic {REDACTED}" in text


def test_a_basic_header_its_decoded_password_and_url_encoded_forms_are_redacted(
    env: Environment, server: LocalHTTP
) -> None:
    password = "p@ss/w0rd+&=secret"
    basic = base64.b64encode(f"api-user:{password}".encode()).decode()
    connection = authorized(server, f"Basic {basic}")
    server.routes["/fail"] = echo(500)
    outcome = act(env, "webhook.send", {"body": {"note": quote_plus(password)}}, connection)
    assert not outcome.ok and outcome.retryable
    text = stored(outcome)
    for form in (basic, password, quote(password, safe=""), quote_plus(password), json.dumps(password)[1:-1]):
        assert form not in text, form


def test_a_bearer_token_echoed_url_encoded_is_redacted(env: Environment, server: LocalHTTP) -> None:
    token = "tok_live/Ab+Cd=Ef_0123"
    connection = authorized(server, f"Bearer {token}")
    server.routes["/fail"] = echo(400)
    outcome = act(env, "webhook.send", {}, connection)
    text = stored(outcome)
    assert token not in text and quote(token, safe="") not in text
    assert REDACTED in text


@pytest.mark.parametrize(
    ("kind", "path", "shown"),
    [
        ("slack", "/services/T0AB12CD/B0EF34GH/xoxSECRETpath123456", "/services/***"),
        ("discord", "/api/webhooks/112233445566778899/DiScOrDtOkEn-abc_123", "/api/***"),
    ],
)
def test_a_webhook_urls_secret_path_is_masked(
    env: Environment, server: LocalHTTP, kind: str, path: str, shown: str
) -> None:
    server.routes[path] = echo(404)
    url = server.url(path)
    connection = Connection("acme", "hook", kind, {}, {"webhook_url": url})
    outcome = act(env, f"{kind}.send", {"text": "hi"}, connection)
    assert not outcome.ok
    assert outcome.error is not None
    assert outcome.error["message"] == f"POST {server.url(shown)} answered HTTP 404"
    text = stored(outcome)
    secret_part = path.split("/", 2)[2]
    for form in (
        secret_part,
        quote(secret_part, safe=""),
        secret_part.rsplit("/", 1)[1],
        quote(url, safe=""),
    ):
        assert form not in text, form


def test_a_failed_webhook_url_is_masked_in_connection_errors(env: Environment) -> None:
    url = "http://127.0.0.1:9/services/T000/B000/SECRETPATH123"  # nothing listens on port 9
    connection = Connection("acme", "team", "slack", {}, {"webhook_url": url})
    outcome = act(env, "slack.send", {"text": "hi"}, connection)
    assert outcome.error is not None
    assert outcome.error["message"].startswith("POST http://127.0.0.1:9/services/*** failed")


def test_query_string_tokens_are_masked_in_outputs_and_errors(env: Environment, server: LocalHTTP) -> None:
    server.routes["/fail"] = echo(500)
    url = server.url(
        "/fail?page=2&token=qt-abc123&api_key=AK999&sig=s1g&X-Amz-Signature=f00&access_token=at1"
    )
    connection = Connection("acme", "api", "webhook", {"url": url}, {})
    outcome = act(env, "webhook.send", {}, connection)
    text = stored(outcome)
    for value in ("qt-abc123", "AK999", "s1g", "f00", "at1"):
        assert value not in text, value
    assert outcome.error is not None
    assert (
        "?page=2&token=***&api_key=***&sig=***&X-Amz-Signature=***&access_token=***"
        in outcome.error["message"]
    )


def test_without_a_connection_only_the_error_is_masked(env: Environment, server: LocalHTTP) -> None:
    """The output of a step without a connection is the tenant's data, passed on as it came
    (a presigned URL in it may be what the next step needs); the error message is masked."""
    server.routes["/fail"] = echo(500)
    outcome = act(env, "webhook.send", {"url": server.url("/fail?key=k-123456")}, None)
    assert outcome.error is not None and "?key=***" in outcome.error["message"]
    assert outcome.output is not None and outcome.output["body"]["url"].endswith("?key=k-123456")


def test_an_smtp_plain_credential_is_redacted() -> None:
    forms = secret_forms({"password": "smtp-Pa55"}, ["mailer"])
    plain = base64.b64encode(b"\0mailer\0smtp-Pa55").decode()
    assert (
        Redactor(forms).text(f"535 5.7.8 AUTH PLAIN {plain} rejected")
        == "535 5.7.8 AUTH PLAIN [redacted] rejected"
    )


def test_a_secret_urls_password_is_redacted_with_or_without_a_path() -> None:
    for url in (
        "https://bot:pw-9x8y7z@hooks.example.com/",
        "https://bot:pw-9x8y7z@hooks.example.com/in/T1/tok",
    ):
        redactor = Redactor(secret_forms({"webhook_url": url}))
        assert "pw-9x8y7z" not in redactor.text(f"login failed for bot:pw-9x8y7z at {url}")


def test_query_token_names() -> None:
    assert (
        mask_query_tokens("https://x/?monkey=1&key=2&apiKey=3&x=4")
        == "https://x/?monkey=1&key=***&apiKey=***&x=4"
    )
    assert mask_query_tokens("a=b and no url") == "a=b and no url"


_SECRET = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=6, max_size=24)


@given(_SECRET, st.text(st.characters(codec="ascii"), min_size=1, max_size=12), st.text(max_size=10))
def test_every_derived_form_of_a_secret_is_redacted(secret: str, user: str, around: str) -> None:
    redactor = Redactor(secret_forms({"token": secret}, [user]))
    basic = base64.b64encode(f"{user}:{secret}".encode()).decode()
    for form in (secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1], basic):
        text = redactor.text(f"{around}<{form}>{around}")
        assert form not in text or form in f"{REDACTED}{MASK}", (form, text)


def test_an_actions_unexpected_exception_is_logged_and_reported_redacted(
    env: Environment, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    token = "tok_bug_0a1b2c3d4e"

    def broken(request: ActionRequest, env: Environment) -> dict[str, Any]:
        raise RuntimeError(f"cannot use {request.connection.secret['headers']['Authorization']!r}")  # type: ignore[union-attr]

    monkeypatch.setitem(REGISTRY, "broken.send", broken)
    connection = Connection(
        "acme",
        "api",
        "webhook",
        {"url": "https://api.example.com/"},
        {"headers": {"Authorization": f"Bearer {token}"}},
    )
    outcome = act(env, "broken.send", {}, connection)
    assert outcome.error is not None and outcome.error["type"] == "internal" and outcome.retryable
    [record] = [r for r in caplog.records if r.getMessage() == "action raised unexpectedly"]
    line = JsonFormatter().format(record)
    assert "RuntimeError" in line and "Traceback" in line
    assert token not in line and token not in stored(outcome)
