"""Fixtures shared by the runner's tests: the actions' environment, the CLI against a database,
scripted raw HTTP servers, two local HTTP servers (a connection's host and another)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

from conveyor.actions import Environment
from conveyor.cli import main
from conveyor.netguard import NetworkPolicy
from tests.runner.helpers import LocalHTTP, local_http
from tests.runner.raw_http import RawHTTP, Script


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


@pytest.fixture
def serve() -> Iterator[Callable[..., RawHTTP]]:
    """Starts scripted raw HTTP servers (`serve(script, tls=..., host=...)`); closes them afterwards."""
    servers: list[RawHTTP] = []

    def start(script: Script, **kwargs: Any) -> RawHTTP:
        servers.append(RawHTTP(script, **kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def allowed() -> Iterator[LocalHTTP]:
    """A local HTTP server: the host a connection names."""
    with local_http() as s:
        yield s


@pytest.fixture
def other() -> Iterator[LocalHTTP]:
    """Another local HTTP server, which a connection's credentials must never reach."""
    with local_http() as s:
        yield s
