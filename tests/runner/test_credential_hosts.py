"""A connection's credentials go only to the hosts its configuration names: a step that
names another URL fails permanently and nothing is sent; redirects are never followed.
Two real local HTTP servers: the one the connection names and another one."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor.actions import ActionRequest, Environment, Outcome, perform
from conveyor.connections import Connection, allowed_origins, parse_allowed_host, validate
from conveyor.errors import ConveyorError
from tests.runner.helpers import LocalHTTP, Reply

TOKEN = "Bearer tok_live_7f3a9c0e5b1d"


def webhook(config: dict[str, Any]) -> Connection:
    return Connection(
        "acme", "crm", "webhook", config, {"headers": {"Authorization": TOKEN}, "signing_secret": "whsec_1"}
    )


def send(env: Environment, data: dict[str, Any], connection: Connection | None) -> Outcome:
    return perform(ActionRequest("webhook.send", data, "9:ping:1", 5.0, connection, "acme"), env)


def test_a_step_url_on_another_host_fails_permanently_and_the_other_host_receives_nothing(
    env: Environment, allowed: LocalHTTP, other: LocalHTTP
) -> None:
    connection = webhook({"url": allowed.url("/hook")})
    outcome = send(env, {"url": other.url("/steal"), "body": {"x": 1}}, connection)
    assert not outcome.ok and outcome.retryable is False
    assert outcome.error is not None and outcome.error["type"] == "host_not_allowed"
    message = outcome.error["message"]
    assert f"http://127.0.0.1:{other.port}" in message  # the step's URL host
    assert f"(allowed: http://127.0.0.1:{allowed.port})" in message  # the connection's hosts
    assert "connection 'crm'" in message and "config.allowed_hosts" in message
    assert other.received == [] and allowed.received == []


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:{port}/hook",  # same address, another host name
        "https://127.0.0.1:{port}/hook",  # another scheme
        "http://127.0.0.1:{other}/hook",  # another port
        "http://127.0.0.1:{port}@127.0.0.1:{other}/hook",  # the allowed origin as userinfo
        "http://127.0.0.1:{port}\\@127.0.0.1:{other}/hook",
    ],
)
def test_only_the_exact_origin_matches(
    env: Environment, allowed: LocalHTTP, other: LocalHTTP, url: str
) -> None:
    connection = webhook({"url": allowed.url("/hook")})
    outcome = send(env, {"url": url.format(port=allowed.port, other=other.port)}, connection)
    assert outcome.error is not None and outcome.error["type"] == "host_not_allowed", outcome.error
    assert allowed.received == [] and other.received == []


def test_allowed_hosts_lets_a_step_name_another_origin_and_the_connections_url_stays_allowed(
    env: Environment, allowed: LocalHTTP, other: LocalHTTP
) -> None:
    connection = webhook({"url": allowed.url("/hook"), "allowed_hosts": [f"http://127.0.0.1:{other.port}"]})
    assert send(env, {"url": other.url("/elsewhere")}, connection).ok
    assert send(env, {"url": allowed.url("/other-path")}, connection).ok
    assert send(env, {}, connection).ok  # the default URL
    assert other.requests_to("/elsewhere")[0].headers["authorization"] == TOKEN
    assert [r.path for r in allowed.received] == ["/other-path", "/hook"]


def test_a_step_without_a_connection_may_call_any_url(env: Environment, other: LocalHTTP) -> None:
    assert send(env, {"url": other.url("/free")}, None).ok
    assert "authorization" not in other.requests_to("/free")[0].headers


def test_a_connection_that_names_no_host_sends_nowhere(env: Environment, other: LocalHTTP) -> None:
    """A webhook connection stored before hosts were required: every use fails, clearly."""
    outcome = send(env, {"url": other.url("/x")}, webhook({}))
    assert outcome.error is not None and outcome.error["type"] == "host_not_allowed"
    assert "names no host its credentials may be sent to" in outcome.error["message"]
    assert other.received == []


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_credentials_never_follow_a_redirect(
    env: Environment, allowed: LocalHTTP, other: LocalHTTP, status: int
) -> None:
    allowed.routes["/hook"] = Reply(status=status, headers={"Location": other.url("/landed")})
    outcome = send(env, {"body": {"x": 1}}, webhook({"url": allowed.url("/hook")}))
    assert not outcome.ok and outcome.retryable is False
    assert outcome.error is not None and outcome.error["status"] == status
    assert len(allowed.received) == 1 and other.received == []


def test_slack_and_sms_send_only_to_their_own_urls(
    env: Environment, allowed: LocalHTTP, other: LocalHTTP
) -> None:
    slack = Connection("acme", "team", "slack", {}, {"webhook_url": allowed.url("/services/T1/B1/tok12345")})
    sms = Connection(
        "acme", "sms", "twilio", {"account_sid": "AC1", "base_url": allowed.url("")}, {"auth_token": "t0ken"}
    )
    assert allowed_origins("slack", slack.config, slack.secret) == (("http", "127.0.0.1", allowed.port),)
    assert allowed_origins("twilio", sms.config, sms.secret) == (("http", "127.0.0.1", allowed.port),)
    assert allowed_origins("twilio", {"account_sid": "AC1"}, {}) == (("https", "api.twilio.com", 443),)
    assert perform(ActionRequest("slack.send", {"text": "hi"}, "k", 5.0, slack, "acme"), env).ok
    assert [r.path for r in allowed.received] == ["/services/T1/B1/tok12345"]
    assert other.received == []


def test_allowed_host_entries() -> None:
    assert parse_allowed_host("API.Example.com") == ("https", "api.example.com", 443)
    assert parse_allowed_host("api.example.com:8443") == ("https", "api.example.com", 8443)
    assert parse_allowed_host("http://127.0.0.1:8080/") == ("http", "127.0.0.1", 8080)
    assert parse_allowed_host("https://[::1]") == ("https", "::1", 443)
    for bad, message in [
        ("https://api.example.com/v1", "without a path"),
        ("ftp://files.example.com", "only http and https"),
        ("", "not a host name or an origin"),
        (42, "not a host name or an origin"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_allowed_host(bad)


@pytest.mark.parametrize(
    ("kind", "config", "secret", "message"),
    [
        ("webhook", {}, {"signing_secret": "s"}, "config.url or config.allowed_hosts is required"),
        ("webhook", {"headers": {"X": "1"}}, {}, "config.url or config.allowed_hosts is required"),
        ("webhook", {"url": "ftp://x.example/"}, {}, "config.url must be an http(s) URL"),
        ("webhook", {"allowed_hosts": "api.example.com"}, {}, "config.allowed_hosts must be a list"),
        (
            "webhook",
            {"allowed_hosts": ["api.example.com", "https://x.example/path"]},
            {},
            "config.allowed_hosts[1]: 'https://x.example/path' must be an origin",
        ),
        (
            "slack",
            {},
            {"webhook_url": "hooks.slack.com/services/x"},
            "secret.webhook_url must be an http(s) URL",
        ),
        ("twilio", {"account_sid": "AC1", "base_url": "api"}, {"auth_token": "t"}, "config.base_url must be"),
    ],
)
def test_a_connection_must_name_its_hosts_when_it_is_added(
    kind: str, config: dict[str, Any], secret: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConveyorError) as raised:
        validate(kind, config, secret)
    assert message in str(raised.value)


def test_a_malformed_secret_url_is_not_quoted_back() -> None:
    with pytest.raises(ConveyorError) as raised:
        validate("discord", {}, {"webhook_url": "discord.com/api/webhooks/1/TOKEN-XYZ"})
    assert "secret.webhook_url must be an http(s) URL with a host" in str(raised.value)
    assert "TOKEN-XYZ" not in str(raised.value)


def test_valid_connections_pass_validation() -> None:
    validate("webhook", {"url": "https://api.example.com/hook"}, {"headers": {"Authorization": "x"}})
    validate("webhook", {"allowed_hosts": ["api.example.com", "http://10.0.0.5:8080"]}, {})
    validate("slack", {}, {"webhook_url": "https://hooks.slack.com/services/T/B/x"})
    validate("twilio", {"account_sid": "AC1"}, {"auth_token": "t"})
