"""`conveyor db start | stop | status | url` on a private cluster, as root and as a normal user."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from conveyor.cluster import Cluster, resolve_server_user
from tests.conftest import free_port

CONVEYOR = [sys.executable, "-m", "conveyor.cli"]


@pytest.fixture
def cluster_env() -> Iterator[dict[str, str]]:
    root = Path(tempfile.mkdtemp(prefix="conveyor-cli-"))
    root.chmod(0o755)
    env = {
        **os.environ,
        "CONVEYOR_EMBEDDED_DIR": str(root / "pg"),
        "CONVEYOR_EMBEDDED_PORT": str(free_port()),
    }
    env.pop("CONVEYOR_DATABASE_URL", None)
    try:
        yield env
    finally:
        subprocess.run([*CONVEYOR, "db", "stop"], env=env, capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


def cli(env: dict[str, str], *args: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    extra: dict[str, object] = {}
    if user is not None:
        entry = pwd.getpwuid(user)
        extra = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    return subprocess.run(
        [*CONVEYOR, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
        check=False,
        **extra,
    )  # type: ignore[call-overload]


def test_db_start_status_url_stop(cluster_env: dict[str, str]) -> None:
    started = cli(cluster_env, "db", "start")
    assert started.returncode == 0, started.stderr
    assert "embedded PostgreSQL started" in started.stdout
    again = cli(cluster_env, "db", "start")
    assert again.returncode == 0 and "already running" in again.stdout

    status = cli(cluster_env, "db", "status", "--json")
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert info["running"] and info["port"] == int(cluster_env["CONVEYOR_EMBEDDED_PORT"])

    url = cli(cluster_env, "db", "url").stdout.strip()
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "select current_database(), current_setting('shared_preload_libraries'),"
            " current_setting('cron.database_name')"
        ).fetchone()
    assert row == ("conveyor", "pg_cron", "conveyor")
    psql = subprocess.run(["psql", url, "-tAc", "select 1"], capture_output=True, text=True, check=False)
    assert psql.stdout.strip() == "1", psql.stderr

    tcp_url = cli(cluster_env, "db", "url", "--tcp").stdout.strip()
    assert "@127.0.0.1:" in tcp_url
    with psycopg.connect(tcp_url) as conn:
        assert conn.execute("select 1").fetchone() == (1,)

    stopped = cli(cluster_env, "db", "stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    after = cli(cluster_env, "db", "status")
    assert after.returncode == 3 and "False" in after.stdout


def test_server_runs_as_unprivileged_user(cluster_env: dict[str, str]) -> None:
    assert cli(cluster_env, "db", "start").returncode == 0
    data_dir = Path(cluster_env["CONVEYOR_EMBEDDED_DIR"]) / "data"
    expected = resolve_server_user()
    owner = (data_dir / "postmaster.pid").stat().st_uid
    assert owner == expected.uid
    assert owner != 0, "PostgreSQL must never run as root"
    pid = int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    assert os.stat(f"/proc/{pid}").st_uid == expected.uid


def test_migrate_without_url_uses_and_starts_embedded_cluster(cluster_env: dict[str, str]) -> None:
    result = cli(cluster_env, "migrate")
    assert result.returncode == 0, result.stderr
    assert "started the embedded PostgreSQL" in result.stderr
    assert "applied    migrations/0001_runners.sql" in result.stdout
    again = cli(cluster_env, "migrate")
    assert again.returncode == 0 and "up to date: nothing to apply" in again.stdout


def test_socket_path_too_long_is_a_clear_error(cluster_env: dict[str, str], tmp_path: Path) -> None:
    cluster_env["CONVEYOR_EMBEDDED_DIR"] = str(tmp_path / ("x" * 120))
    result = cli(cluster_env, "db", "start")
    assert result.returncode == 1
    assert result.stderr.startswith("error: the socket path")
    assert "CONVEYOR_EMBEDDED_DIR" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can act as another user")
def test_db_start_as_a_normal_user(tmp_path: Path) -> None:
    """As root we can also prove the normal-user path: a forked child drops to an unprivileged
    user (the interpreter is already loaded, so it needs no access to it) and starts a cluster."""
    user = resolve_server_user()
    root = Path(tempfile.mkdtemp(prefix="conveyor-user-"))
    root.chmod(0o755)
    os.chown(root, user.uid, user.gid)
    cluster = Cluster(root=root / "pg", port=free_port())
    pid = os.fork()
    if pid == 0:  # the child: become the normal user, start, report through the exit code
        code = 1
        try:
            os.setgroups([])
            os.setgid(user.gid)
            os.setuid(user.uid)
            code = 0 if cluster.start() and resolve_server_user().uid == user.uid else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    try:
        assert os.waitstatus_to_exitcode(status) == 0
        assert (cluster.data_dir / "postmaster.pid").stat().st_uid == user.uid
        with psycopg.connect(cluster.url()) as conn:
            assert conn.execute("select current_user").fetchone() == ("postgres",)
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
