"""Test fixtures: one real PostgreSQL cluster (pg_cron preloaded, pgmq installed) per session.

The cluster is started by Conveyor's own embedded-cluster code, which runs the server
as an unprivileged user when the tests run as root (CI does; PostgreSQL refuses root,
and pytest-postgresql's process fixture cannot drop privileges). Databases are
managed with pytest-postgresql's DatabaseJanitor: a template database is migrated once
per session, and every test that asks for `db_url` gets a fresh copy of it. Also here: the
`runners` / `ready_runners` fixtures, real `conveyor run` processes for the e2e and runner tests.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row
from pytest_postgresql.janitor import DatabaseJanitor

from conveyor.cluster import Cluster
from conveyor.migrate import migrate
from tests.e2e.helpers import RunnerProcess
from tests.runner.helpers import wait_for

CRON_DB = "conveyor"
TEMPLATE_DB = "conveyor_tmpl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Server:
    cluster: Cluster

    @property
    def host(self) -> str:
        return str(self.cluster.socket_dir)

    @property
    def port(self) -> int:
        return self.cluster.port

    @property
    def user(self) -> str:
        return self.cluster.superuser

    def url(self, dbname: str) -> str:
        return self.cluster.url(dbname)

    def janitor(
        self, dbname: str, *, template: str | None = None, as_template: bool = False
    ) -> DatabaseJanitor:
        return DatabaseJanitor(
            user=self.user,
            host=self.host,
            port=self.port,
            dbname=dbname,
            template_dbname=template,
            as_template=as_template,
        )


def memory_backed_dir(min_free: int = 4 << 30) -> str | None:
    """/dev/shm where it is writable and roomy, for the session cluster's data directory: every
    test creates and drops a database, and on a disk those file creations and deletions took most
    of the suite's time (about 0.4 s a test against 0.05 s in memory). A container's small
    default /dev/shm (64 MB) would fill up, so then None: the usual temp dir."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK | os.X_OK)):
        return None
    stats = os.statvfs(shm)
    return str(shm) if stats.f_bavail * stats.f_frsize >= min_free else None


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    root = Path(tempfile.mkdtemp(prefix="conveyor-test-pg-", dir=memory_backed_dir()))
    root.chmod(0o755)  # as root, the server's unprivileged user must reach the cluster below
    cluster = Cluster(root=root / "pg", port=free_port(), dbname=CRON_DB)
    cluster.start()
    try:
        yield Server(cluster)
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def cron_db_url(pg_server: Server) -> str:
    """The database where pg_cron's scheduler runs, fully migrated (shared by the session)."""
    url = pg_server.url(CRON_DB)
    migrate(url)
    return url


@pytest.fixture(scope="session")
def template_db(pg_server: Server) -> Iterator[str]:
    """A migrated template database; per-test databases are copies of it."""
    janitor = pg_server.janitor(TEMPLATE_DB, as_template=True)
    janitor.drop()
    with janitor:
        migrate(pg_server.url(TEMPLATE_DB))
        yield TEMPLATE_DB


_db_counter = itertools.count()


@pytest.fixture
def db_url(pg_server: Server, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for this test alone."""
    name = f"test_{next(_db_counter)}"
    with pg_server.janitor(name, template=template_db):
        yield pg_server.url(name)


@pytest.fixture
def empty_db_url(pg_server: Server) -> Iterator[str]:
    """A fresh database with nothing in it (for migrator tests)."""
    name = f"empty_{next(_db_counter)}"
    with pg_server.janitor(name):
        yield pg_server.url(name)


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[dict[str, object]]]:
    """An autocommit connection (rows as dicts) to this test's database."""
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as connection:
        yield connection


def _runner_starter(
    db_url: str, log_dir: Path, *, wait_ready: bool
) -> Iterator[Callable[..., RunnerProcess]]:
    """`start(**env)` runs `conveyor run` against `db_url` (env overrides its settings); every
    runner still alive at the end is killed."""
    started: list[RunnerProcess] = []

    def start(**env: str) -> RunnerProcess:
        runner = RunnerProcess(db_url, log_dir / f"runner{len(started)}.log", **env)
        started.append(runner)
        if wait_ready:
            wait_for(runner.ready, timeout=30)
        return runner

    yield start
    for runner in started:
        if runner.proc.poll() is None:
            runner.proc.kill()
            runner.proc.wait()


@pytest.fixture
def runners(db_url: str, tmp_path: Path) -> Iterator[Callable[..., RunnerProcess]]:
    """Starts runner processes on this test's database and returns at once."""
    yield from _runner_starter(db_url, tmp_path, wait_ready=False)


@pytest.fixture
def ready_runners(db_url: str, tmp_path: Path) -> Iterator[Callable[..., RunnerProcess]]:
    """Starts runner processes on this test's database, each returned once its log says ready."""
    yield from _runner_starter(db_url, tmp_path, wait_ready=True)
