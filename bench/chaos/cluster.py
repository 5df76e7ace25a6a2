"""A private PostgreSQL cluster for chaos runs (one that may be restarted), and fresh
migrated databases in it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql

from bench.chaos.sinks import free_port
from conveyor.cluster import Cluster
from conveyor.migrate import migrate


@contextmanager
def private_cluster(prefix: str = "conveyor-chaos-") -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)  # as root, the server's unprivileged user must reach the cluster below
    cluster = Cluster(root=root / "pg", port=free_port())
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def fresh_database(cluster: Cluster, name: str) -> str:
    """A new migrated database `name` (not the one pg_cron runs in: the runs drive ticks
    themselves, and the schedule race uses simulated time)."""
    with psycopg.connect(cluster.url("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    url = cluster.url(name)
    migrate(url)
    return url
