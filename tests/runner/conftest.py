"""Fixtures shared by the runner's tests: the actions' environment, the CLI against a database."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

from conveyor.actions import Environment
from conveyor.cli import main
from conveyor.netguard import NetworkPolicy


@pytest.fixture
def env() -> Iterator[Environment]:
    """The actions' environment, with the local test servers' addresses allowlisted."""
    environment = Environment.create(NetworkPolicy.parse("127.0.0.1/32,::1/128"))
    yield environment
    environment.close()


@pytest.fixture
def cli(db_url: str, conn: psycopg.Connection[dict[str, Any]]) -> Any:
    """`conveyor ...` (click's runner) against this test's database, for tenant acme by default
    (tenants acme and globex exist)."""
    conn.execute(
        "insert into conveyor.tenants (tenant_id, name) values ('acme', 'Acme'), ('globex', 'Globex')"
    )
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(
            main,
            [*args],
            env={"CONVEYOR_DATABASE_URL": db_url, "CONVEYOR_TENANT": "acme"},
            catch_exceptions=False,
        )

    return invoke
