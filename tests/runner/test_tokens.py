"""User tokens: what verifies, what each wrong token is told, and `conveyor tokens sign`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
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


def token_with(**changes: Any) -> str:
    return jwt.encode(claims(**changes), SECRET, algorithm="HS256")


# Each token is made when its test runs, not at collection (a collected one would expire).
@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda: None, "missing token: send Authorization: Bearer <token>"),
        (lambda: "", "missing token"),
        (lambda: "not-a-jwt", "token is malformed"),
        (lambda: tokens.sign(SECRET, "acme", "u-1", 60, now=time.time() - 3600), "token expired at 20"),
        (
            lambda: tokens.sign("t" * 40, "acme", "u-1", 60),
            "token signature does not match (was it signed with CONVEYOR_TOKEN_SECRET?)",
        ),
        (lambda: token_with(tenant=None), "token lacks the 'tenant' claim"),
        (lambda: token_with(exp=None), "token lacks the 'exp' claim"),
        (lambda: token_with(aud="elsewhere"), "token audience (aud) must be 'conveyor'"),
        (lambda: token_with(iat=int(time.time()) + 3600), "issued in the future"),
        (lambda: token_with(sub=""), "claim 'sub' must be a non-empty string"),
        (lambda: token_with(operator="yes"), "claim 'operator' must be true or false"),
        (
            lambda: jwt.encode(claims(), "x" * 64, algorithm="HS512"),
            "token algorithm 'HS512' is not accepted (only HS256)",
        ),
        (lambda: jwt.encode(claims(), None, algorithm="none"), "token algorithm 'none' is not accepted"),
    ],
)
def test_a_token_that_proves_nothing_is_told_what_is_wrong(
    make: Callable[[], str | None], error: str
) -> None:
    with pytest.raises(tokens.TokenError) as raised:
        tokens.verify(SECRET, make())
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
