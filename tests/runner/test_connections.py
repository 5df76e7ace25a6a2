"""Connections: encrypted at rest, never printed, rotatable, tenant-isolated; the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from aiosmtpd.controller import Controller
from click.testing import CliRunner
from cryptography.fernet import Fernet
from hypothesis import given
from hypothesis import strategies as st

from conveyor import connections as conns
from conveyor.cli import main
from conveyor.errors import ConveyorError
from conveyor.secrets import REDACTED, SecretBox, redact
from tests.conftest import free_port
from tests.e2e.helpers import setup_tenant
from tests.sql.tenant_context import acting_for, mint_token

KEY_A = Fernet.generate_key().decode()
KEY_B = Fernet.generate_key().decode()
PASSWORD = "p4ss-word-Qx9"


def cli(db_url: str, key: str | None, *args: str, stdin: str | None = None, **env: str) -> Any:
    environment = {"CONVEYOR_DATABASE_URL": db_url, "CONVEYOR_SECRET_KEY": key or "", **env}
    return CliRunner().invoke(main, list(args), input=stdin, env=environment, catch_exceptions=False)


def test_secret_box_round_trips_and_refuses_a_foreign_key() -> None:
    token = SecretBox(KEY_A).encrypt({"password": PASSWORD})
    assert PASSWORD.encode() not in token
    assert SecretBox(f"{KEY_B},{KEY_A}").decrypt(token) == {"password": PASSWORD}
    with pytest.raises(ConveyorError, match="cannot be decrypted with any key"):
        SecretBox(KEY_B).decrypt(token)


def test_a_malformed_key_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ConveyorError, match="malformed key"):
        SecretBox("not-a-fernet-key")
    with pytest.raises(ConveyorError, match="not set"):
        SecretBox(" , ")


def test_redact_replaces_secrets_deeply_including_inside_longer_strings() -> None:
    value = {
        "url": "https://hooks.example.com/T/B/abcdefSECRET",
        "nested": [{"k": "abcdefSECRET"}, "ok", 12345678],
        "abcdefSECRET": True,
    }
    assert redact(value, {"abcdefSECRET", "12345678"}) == {
        "url": f"https://hooks.example.com/T/B/{REDACTED}",
        "nested": [{"k": REDACTED}, "ok", REDACTED],
        REDACTED: True,
    }


@given(st.text(min_size=4, max_size=30), st.text(max_size=20), st.text(max_size=20))
def test_a_redacted_string_never_contains_the_secret(secret: str, before: str, after: str) -> None:
    redacted = redact({"error": before + secret + after}, {secret})
    assert secret not in redacted["error"] or secret in REDACTED


def test_cli_add_stores_the_secret_encrypted_and_never_prints_it(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    setup_tenant(conn, "acme")
    result = cli(
        db_url,
        KEY_A,
        "connections", "add", "--tenant", "acme", "--kind", "smtp", "mail",
        "--config", '{"host": "smtp.example.com", "port": 2525, "username": "mailer", "security": "none"}',
        "--secret-file", "-",
        stdin=json.dumps({"password": PASSWORD}),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    row = conn.execute("select kind, config, secret from conveyor.connections").fetchone()
    assert row is not None
    assert row["kind"] == "smtp" and row["config"]["host"] == "smtp.example.com"
    assert PASSWORD.encode() not in bytes(row["secret"])
    assert SecretBox(KEY_A).decrypt(row["secret"]) == {"password": PASSWORD}

    listed = cli(db_url, KEY_A, "connections", "list", "--tenant", "acme", "--json")
    assert listed.exit_code == 0
    [entry] = json.loads(listed.output)
    assert entry["name"] == "mail" and entry["has_secret"] is True
    assert PASSWORD not in listed.output
    table = cli(db_url, KEY_A, "connections", "list", "--tenant", "acme")
    assert "mail" in table.output and PASSWORD not in table.output


def test_cli_add_validates_the_kinds_fields(db_url: str, conn: psycopg.Connection[Any]) -> None:
    setup_tenant(conn, "acme")
    result = cli(
        db_url, KEY_A, "connections", "add", "--tenant", "acme", "--kind", "twilio", "sms",
        "--config", '{"auth_token": "oops"}',
    )  # fmt: skip
    assert result.exit_code == 1
    assert "config.account_sid is required" in result.output
    assert "secret.auth_token is required" in result.output
    assert "config.auth_token is not a twilio setting (it is a secret field" in result.output
    add_hook = ("connections", "add", "--tenant", "acme", "--kind", "webhook", "hook")
    config = ("--config", '{"url": "https://example.com/hook"}')
    duplicate = [cli(db_url, KEY_A, *add_hook, *config) for _ in range(2)]
    assert [r.exit_code for r in duplicate] == [0, 1]
    assert "already has a connection named 'hook' (use --replace)" in duplicate[1].output
    no_key = cli(
        db_url, None, "connections", "add", "--tenant", "acme", "--kind", "slack", "team",
        "--secret-file", "-", stdin='{"webhook_url": "https://hooks.slack.com/x"}',
    )  # fmt: skip
    assert no_key.exit_code == 1 and "CONVEYOR_SECRET_KEY is not set" in no_key.output


def test_rotation_re_encrypts_under_the_new_key(db_url: str, conn: psycopg.Connection[Any]) -> None:
    setup_tenant(conn, "acme")
    setup_tenant(conn, "globex")
    box_a = SecretBox(KEY_A)
    for tenant_id in ("acme", "globex"):
        conns.add(
            conn, box_a, tenant_id=tenant_id, name="team", kind="slack", config={},
            secret={"webhook_url": f"https://hooks.slack.com/{tenant_id}"},
        )  # fmt: skip
    result = cli(db_url, f"{KEY_B},{KEY_A}", "connections", "rotate")
    assert result.exit_code == 0, result.output
    assert "re-encrypted 2 secret(s)" in result.output
    # the old key can be dropped now: the new one alone decrypts everything
    only_b = SecretBox(KEY_B)
    for tenant_id in ("acme", "globex"):
        loaded = conns.load(conn, only_b, tenant_id, "team")
        assert loaded.secret == {"webhook_url": f"https://hooks.slack.com/{tenant_id}"}
    with pytest.raises(ConveyorError, match="cannot be decrypted"):
        conns.load(conn, box_a, "acme", "team")


def test_remove(db_url: str, conn: psycopg.Connection[Any]) -> None:
    setup_tenant(conn, "acme")
    conns.add(
        conn,
        None,
        tenant_id="acme",
        name="hook",
        kind="webhook",
        config={"url": "https://example.com"},
        secret={},
    )
    assert cli(db_url, KEY_A, "connections", "remove", "--tenant", "acme", "hook").exit_code == 0
    again = cli(db_url, KEY_A, "connections", "remove", "--tenant", "acme", "hook")
    assert again.exit_code == 1 and "has no connection named 'hook'" in again.output


@pytest.fixture
def smtp_port() -> Iterator[int]:
    class Sink:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            return "250 OK"

    port = free_port()
    controller = Controller(Sink(), hostname="127.0.0.1", port=port)
    controller.start()
    yield port
    controller.stop()


def test_cli_test_reaches_the_smtp_server_and_respects_the_network_policy(
    db_url: str, conn: psycopg.Connection[Any], smtp_port: int
) -> None:
    setup_tenant(conn, "acme")
    conns.add(
        conn, SecretBox(KEY_A), tenant_id="acme", name="mail", kind="smtp",
        config={"host": "127.0.0.1", "port": smtp_port, "security": "none"}, secret={"password": PASSWORD},
    )  # fmt: skip
    refused = cli(db_url, KEY_A, "connections", "test", "--tenant", "acme", "mail")
    assert refused.exit_code == 1 and "non-public address" in refused.output
    ok = cli(
        db_url,
        KEY_A,
        "connections",
        "test",
        "--tenant",
        "acme",
        "mail",
        CONVEYOR_ALLOW_PRIVATE_NETWORKS="127.0.0.1/32",
    )
    assert ok.exit_code == 0, ok.output
    assert "ok: 127.0.0.1" in ok.output and PASSWORD not in ok.output


def test_a_tenant_sees_only_its_own_connections_and_never_the_secret_column(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    setup_tenant(conn, "acme")
    setup_tenant(conn, "globex")
    for tenant_id in ("acme", "globex"):
        conns.add(
            conn,
            SecretBox(KEY_A),
            tenant_id=tenant_id,
            name="team",
            kind="slack",
            config={},
            secret={"webhook_url": "https://x"},
        )
    acme = mint_token(conn, "acme")
    with psycopg.connect(db_url, autocommit=True) as app:
        app.execute("set role conveyor_app")
        with acting_for(app, acme):
            rows = app.execute("select tenant_id, name from conveyor.connections").fetchall()
            assert rows == [("acme", "team")]
        with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_for(app, acme):
            app.execute("select secret from conveyor.connections")


def test_keygen_prints_a_usable_key() -> None:
    result = CliRunner().invoke(main, ["connections", "keygen"])
    assert result.exit_code == 0
    box = SecretBox(result.output.strip())
    assert box.decrypt(box.encrypt({"a": "b"})) == {"a": "b"}
