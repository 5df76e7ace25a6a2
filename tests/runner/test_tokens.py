"""User tokens: what verifies, what each wrong token is told, and `conveyor tokens sign`."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest

from conveyor.errors import ConveyorError
from conveyor.serve import tokens

SECRET = "s" * 40


def test_a_signed_token_proves_its_tenant_user_and_operator_flag() -> None:
    principal = tokens.verify(SECRET, tokens.sign(SECRET, "acme", "u-1", 900))
    assert (principal.tenant, principal.user, principal.operator) == ("acme", "u-1", False)
    assert abs(principal.expires_at.timestamp() - (time.time() + 900)) < 5
    assert tokens.verify(SECRET, tokens.sign(SECRET, "acme", "ops", 60, operator=True)).operator is True


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"aud": "conveyor", "sub": "u-1", "tenant": "acme", "iat": now, "exp": now + 60}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


@pytest.mark.parametrize(
    ("token", "error"),
    [
        (None, "missing token: send Authorization: Bearer <token>"),
        ("", "missing token"),
        ("not-a-jwt", "token is malformed"),
        (tokens.sign(SECRET, "acme", "u-1", 60, now=time.time() - 3600), "token expired at 20"),
        (
            tokens.sign("t" * 40, "acme", "u-1", 60),
            "token signature does not match (was it signed with CONVEYOR_TOKEN_SECRET?)",
        ),
        (jwt.encode(claims(tenant=None), SECRET, algorithm="HS256"), "token lacks the 'tenant' claim"),
        (jwt.encode(claims(exp=None), SECRET, algorithm="HS256"), "token lacks the 'exp' claim"),
        (
            jwt.encode(claims(aud="elsewhere"), SECRET, algorithm="HS256"),
            "token audience (aud) must be 'conveyor'",
        ),
        (jwt.encode(claims(iat=int(time.time()) + 3600), SECRET, algorithm="HS256"), "issued in the future"),
        (jwt.encode(claims(sub=""), SECRET, algorithm="HS256"), "claim 'sub' must be a non-empty string"),
        (
            jwt.encode(claims(operator="yes"), SECRET, algorithm="HS256"),
            "claim 'operator' must be true or false",
        ),
        (
            jwt.encode(claims(), "x" * 64, algorithm="HS512"),
            "token algorithm 'HS512' is not accepted (only HS256)",
        ),
        (jwt.encode(claims(), None, algorithm="none"), "token algorithm 'none' is not accepted"),
    ],
)
def test_a_token_that_proves_nothing_is_told_what_is_wrong(token: str | None, error: str) -> None:
    with pytest.raises(tokens.TokenError) as raised:
        tokens.verify(SECRET, token)
    assert error in str(raised.value)


def test_the_bearer_header_wins_over_the_query_parameter() -> None:
    assert tokens.bearer("Bearer abc", "def") == "abc"
    assert tokens.bearer(None, "def") == "def"
    assert tokens.bearer("Basic x", None) is None


@pytest.mark.parametrize(
    ("text", "seconds"), [("15m", 900), ("1h", 3600), ("90s", 90), ("900", 900), ("24h", 86400)]
)
def test_ttl_forms(text: str, seconds: int) -> None:
    assert tokens.parse_ttl(text) == seconds


@pytest.mark.parametrize(
    ("text", "error"), [("7d", "not a duration"), ("25h", "at most 24h"), ("0m", "more than 0")]
)
def test_bad_ttls_are_refused_naming_the_option(text: str, error: str) -> None:
    with pytest.raises(ConveyorError, match=error) as raised:
        tokens.parse_ttl(text)
    assert "--ttl" in str(raised.value)


def test_sign_prints_a_token_the_server_accepts(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_TOKEN_SECRET", SECRET)
    result = cli("tokens", "sign", "--tenant", "acme", "--user", "u-7", "--ttl", "15m", "--operator")
    assert result.exit_code == 0, result.output
    principal = tokens.verify(SECRET, result.output.strip())
    assert (principal.tenant, principal.user, principal.operator) == ("acme", "u-7", True)
    as_json = json.loads(cli("tokens", "sign", "-t", "globex", "-u", "u-8", "--json").output)
    assert tokens.verify(SECRET, as_json["token"]).tenant == "globex"
    assert as_json["expires_at"] == tokens.verify(SECRET, as_json["token"]).as_json()["expires_at"]


@pytest.mark.parametrize(
    ("env", "args", "error"),
    [
        ({}, ["-t", "acme", "-u", "u"], "CONVEYOR_TOKEN_SECRET is not set"),
        ({"CONVEYOR_TOKEN_SECRET": "short"}, ["-t", "acme", "-u", "u"], "is 5 bytes; it must be at least 32"),
        ({"CONVEYOR_TOKEN_SECRET": SECRET}, ["-t", "nobody", "-u", "u"], "tenant 'nobody' does not exist"),
        (
            {"CONVEYOR_TOKEN_SECRET": SECRET},
            ["-t", "acme", "-u", "u", "--ttl", "2d"],
            "--ttl '2d' is not a duration",
        ),
    ],
)
def test_sign_refuses_with_a_clear_error(
    cli: Any, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], args: list[str], error: str
) -> None:
    monkeypatch.delenv("CONVEYOR_TOKEN_SECRET", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = cli("tokens", "sign", *args)
    assert result.exit_code == 1 and error in result.output, result.output
