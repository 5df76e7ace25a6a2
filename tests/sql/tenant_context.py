"""Acting for a tenant as the application role: a token, then a transaction that proves it."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg


def mint_token(conn: psycopg.Connection[Any], tenant: str, valid_for: str = "15 minutes") -> str:
    """A token for `tenant` from conveyor.mint_tenant_token (conn: a privileged role)."""
    row = conn.execute("select conveyor.mint_tenant_token(%s, %s::interval)", (tenant, valid_for)).fetchone()
    assert row is not None
    return str(next(iter(row.values())) if isinstance(row, dict) else row[0])


def platform_token(secret: bytes, tenant: str, expires_at: int) -> str:
    """A token minted the way docs/tenancy.md tells a platform to in its own code."""
    payload = f"v1.{expires_at}.{tenant}"
    return payload + "." + hmac.new(secret, payload.encode(), hashlib.sha256).hexdigest()


@contextmanager
def acting_for(app: psycopg.Connection[Any], token: str) -> Iterator[None]:
    """One transaction of `app` in which conveyor.set_tenant proved the token's tenant."""
    with app.transaction():
        app.execute("select conveyor.set_tenant(%s)", (token,))
        yield


def token_secret(conn: psycopg.Connection[Any]) -> bytes:
    row = conn.execute("select token_secret from conveyor.tenancy_config").fetchone()
    assert row is not None
    return bytes(row["token_secret"])  # type: ignore[arg-type]
