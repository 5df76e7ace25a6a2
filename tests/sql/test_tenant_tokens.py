"""The tenant context: tokens the platform mints and conveyor.set_tenant verifies, the
context bound to one backend and transaction, key rotation and the plain-setting opt-in.

The two-tenant fixtures (`two_tenants`, `app`, `acme`) are tests/sql/conftest.py's.
"""

from __future__ import annotations

import re
import time

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.sql.tenant_context import acting_for, mint_token, platform_token, token_secret
from tests.sql.tenant_seeds import count, seeded_tables

Conn = psycopg.Connection[dict[str, object]]


# --- tokens and the tenant context ------------------------------------------------------------


def test_a_token_the_platform_mints_in_its_own_code_is_accepted(app: Conn, two_tenants: Conn) -> None:
    token = platform_token(token_secret(two_tenants), "globex", int(time.time()) + 60)
    with acting_for(app, token):
        assert app.execute("select conveyor.current_tenant() as t").fetchone() == {"t": "globex"}
        assert count(app, "events") == 1


def test_a_minted_token_names_its_tenant_and_expiry(two_tenants: Conn) -> None:
    before = int(time.time())
    token = mint_token(two_tenants, "acme", "10 minutes")
    match = re.fullmatch(r"(v1)\.(\d+)\.(.+)\.([0-9a-f]{64})", token)
    assert match is not None
    version, expires, tenant, _ = match.groups()
    assert (version, tenant) == ("v1", "acme")
    assert before + 600 <= int(expires) <= int(time.time()) + 601
    assert token == platform_token(token_secret(two_tenants), "acme", int(expires))


def test_a_tenant_id_with_dots_and_colons_round_trips(app: Conn, two_tenants: Conn) -> None:
    two_tenants.execute("select conveyor.create_tenant('acme.eu:1', 'Acme Europe')")
    token = mint_token(two_tenants, "acme.eu:1")
    with acting_for(app, token):
        assert app.execute("select conveyor.current_tenant() as t").fetchone() == {"t": "acme.eu:1"}
        assert app.execute("select tenant_id from conveyor.tenants").fetchall() == [
            {"tenant_id": "acme.eu:1"}
        ]


def forged_tokens(secret: bytes, acme: str) -> list[tuple[str, str]]:
    expires, signature = acme.split(".")[1], acme.split(".")[-1]
    later = int(time.time()) + 3600
    return [
        (f"v1.{expires}.globex.{signature}", "its signature does not match"),  # another tenant, same MAC
        (f"v1.{later}.acme.{signature}", "its signature does not match"),  # a longer life, same MAC
        (platform_token(b"not the installation's secret!!", "acme", later), "its signature does not match"),
        (platform_token(secret, "acme", int(time.time()) - 1), "the token for tenant 'acme' expired at"),
        (platform_token(secret, "initech", later), "tenant 'initech' does not exist"),
        ("acme", "it is malformed"),
        (acme.upper(), "it is malformed"),
        (acme + "0", "it is malformed"),
    ]


def test_forged_expired_and_malformed_tokens_are_refused(app: Conn, two_tenants: Conn, acme: str) -> None:
    for token, message in forged_tokens(token_secret(two_tenants), acme):
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification) as error, app.transaction():
            app.execute("select conveyor.set_tenant(%s)", (token,))
        assert message in str(error.value), token
        assert count(app, "events") == 0


def test_a_context_carried_to_another_connection_or_transaction_is_refused(
    db_url: str, app: Conn, acme: str
) -> None:
    with acting_for(app, acme):
        row = app.execute("select current_setting('conveyor.tenant_context') as c").fetchone()
    assert row is not None
    context = str(row["c"])
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as other:
        other.execute("set role conveyor_app")
        for session in (other, app):  # another backend; a later transaction of the same one
            with (
                pytest.raises(psycopg.errors.InvalidAuthorizationSpecification) as error,
                session.transaction(),
            ):
                session.execute("select set_config('conveyor.tenant_context', %s, true)", (context,))
                count(session, "events")
            assert "the tenant context was not set by conveyor.set_tenant in this transaction" in str(
                error.value
            )
    # Written directly, or set for the whole session: every statement is refused, loudly.
    app.execute("select set_config('conveyor.tenant_context', %s, false)", ("0" * 64 + ".acme",))
    with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
        count(app, "events")
    with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
        app.execute("select conveyor.emit('acme', 'crm.contact.created')")
    app.execute("reset conveyor.tenant_context")
    assert count(app, "events") == 0


def test_rotating_the_keys_refuses_every_earlier_token(app: Conn, two_tenants: Conn, acme: str) -> None:
    secret = token_secret(two_tenants)
    two_tenants.execute("select conveyor.rotate_tenant_keys()")
    assert token_secret(two_tenants) != secret
    with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="signature does not match"):
        app.execute("select conveyor.set_tenant(%s)", (acme,))
    with acting_for(app, mint_token(two_tenants, "acme")):
        assert count(app, "events") == 1


def test_the_application_role_can_neither_read_the_keys_nor_trust_the_plain_setting(app: Conn) -> None:
    for statement in (
        "select token_secret from conveyor.tenancy_config",
        "update conveyor.tenancy_config set trust_tenant_setting = true",
        "select conveyor.rotate_tenant_keys()",
        "select conveyor.mint_tenant_token('acme')",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute(statement)


def test_the_installation_may_opt_in_to_the_plain_setting(app: Conn, two_tenants: Conn) -> None:
    two_tenants.execute("update conveyor.tenancy_config set trust_tenant_setting = true")
    app.execute("set conveyor.tenant_id = 'acme'")
    for table in seeded_tables(two_tenants):
        assert count(app, table) == count(two_tenants, table, "tenant_id = 'acme'"), table
    app.execute("select conveyor.emit('acme', 'crm.contact.created')")
    with pytest.raises(
        psycopg.errors.InsufficientPrivilege, match="tenant 'globex' is not this session's tenant"
    ):
        app.execute("select conveyor.create_api_key('globex', 'stolen')")
    # A verified context still takes precedence over the setting.
    with acting_for(app, mint_token(two_tenants, "globex")):
        assert count(app, "events") == 1
        assert count(app, "events", "tenant_id = 'acme'") == 0
    two_tenants.execute("update conveyor.tenancy_config set trust_tenant_setting = false")
    assert count(app, "events") == 0


def test_tokens_are_minted_by_the_service_role_and_the_issuer_role(db_url: str, two_tenants: Conn) -> None:
    two_tenants.execute(
        "do $$ begin if not exists (select from pg_roles where rolname = 'platform_auth') then "
        "create role platform_auth login; end if; end $$"
    )
    two_tenants.execute("grant conveyor_tenant_issuer to platform_auth")
    with psycopg.connect(db_url, user="platform_auth", autocommit=True, row_factory=dict_row) as issuer:
        token = mint_token(issuer, "globex")
        # Minting tokens is all the issuer may do.
        for statement in ("select conveyor.emit('globex', 'x.y.z')", "select * from conveyor.events"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                issuer.execute(statement)
    two_tenants.execute("revoke conveyor_tenant_issuer from platform_auth")
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as service:
        service.execute("set role conveyor_service")
        assert mint_token(service, "globex").split(".")[2] == "globex"
    assert token.split(".")[2] == "globex"


@pytest.mark.parametrize(
    ("tenant", "valid_for", "message"),
    [
        ("initech", "1 hour", "tenant 'initech' does not exist"),
        ("acme", "0 seconds", "a tenant token must be valid for a positive interval, not 00:00:00"),
        ("acme", "-5 minutes", "a tenant token must be valid for a positive interval, not -00:05:00"),
    ],
)
def test_mint_tenant_token_refuses_bad_input(
    two_tenants: Conn, tenant: str, valid_for: str, message: str
) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue) as error:
        mint_token(two_tenants, tenant, valid_for)
    assert message in str(error.value)
