"""Fixtures several SQL test files share. Non-fixture helpers live in modules named for what
they drive: interpreter_helpers, dispatch_helpers, capture_helpers, workflow_documents,
tenant_context, tenant_seeds."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.sql.interpreter_helpers import make_tenant
from tests.sql.tenant_context import mint_token
from tests.sql.tenant_seeds import SEEDS, SHARED_SEEDS, seeded_tables

Conn = psycopg.Connection[dict[str, Any]]


@pytest.fixture
def tenant(conn: Conn) -> str:
    """Tenant acme (named Acme, timezone UTC)."""
    return make_tenant(conn)


@pytest.fixture
def tenants(conn: Conn) -> Conn:
    """Tenants acme and globex, nothing else."""
    conn.execute("select conveyor.create_tenant('acme', 'Acme'), conveyor.create_tenant('globex', 'Globex')")
    return conn


@pytest.fixture
def contacts(tenants: Conn) -> Conn:
    """A platform table crm.contacts, watched as crm.contact.* (tenants acme and globex)."""
    tenants.execute("create schema crm")
    tenants.execute("""
        create table crm.contacts (
          id bigint primary key,
          tenant_id text not null,
          email text not null,
          status text not null default 'open',
          score integer
        )""")
    tenants.execute("select conveyor.watch('crm.contacts', 'crm', 'contact')")
    return tenants


@pytest.fixture
def two_tenants(conn: Conn) -> Conn:
    """Tenants acme and globex with a row of each in every tenant table."""
    conn.execute(
        "select conveyor.create_tenant('acme', 'Acme'), conveyor.create_tenant('globex', 'Globex', 'Europe/Berlin')"
    )
    for statement in SHARED_SEEDS:
        conn.execute(statement)
    for tenant in ("acme", "globex"):
        for table in seeded_tables(conn):
            conn.execute(SEEDS[table], {"t": tenant})
    return conn


@pytest.fixture
def app(db_url: str, two_tenants: Conn) -> Iterator[Conn]:
    """A session of the application role (RLS-limited) with no tenant set yet."""
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as session:
        session.execute("set role conveyor_app")
        yield session


@pytest.fixture
def acme(two_tenants: Conn) -> str:
    """A token for tenant acme, minted by the privileged fixture connection."""
    return mint_token(two_tenants, "acme")
