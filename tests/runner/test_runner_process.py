"""`conveyor run`: announces itself, heartbeats, and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psycopg
from psycopg.rows import dict_row

from conveyor.settings import MIGRATIONS_DIR


def wait_for(predicate, timeout: float = 15.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def runners(url: str) -> list[dict[str, object]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute("select * from conveyor.runners").fetchall()


def test_runner_heartbeats_and_stops_cleanly_on_sigterm(db_url: str) -> None:
    env = {**os.environ, "CONVEYOR_DATABASE_URL": db_url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor.cli", "run", "--heartbeat-interval", "0.2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        rows = wait_for(lambda: runners(db_url))
        assert rows[0]["pid"] == proc.pid and rows[0]["stopped_at"] is None
        first_seen = rows[0]["last_seen_at"]
        wait_for(lambda: runners(db_url)[0]["last_seen_at"] != first_seen)
        with psycopg.connect(db_url) as conn:
            live = conn.execute("select runner_id from conveyor.live_runners()").fetchall()
        assert [r[0] for r in live] == [rows[0]["runner_id"]]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=15)
    assert proc.returncode == 0, stderr
    assert runners(db_url)[0]["stopped_at"] is not None
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert [line["msg"] for line in lines][-1] == "runner stopped"
    newest = max(p.name for p in MIGRATIONS_DIR.glob("*.sql"))
    assert any(line.get("schema") == newest for line in lines)


def test_runner_refuses_unmigrated_database(empty_db_url: str) -> None:
    env = {**os.environ, "CONVEYOR_DATABASE_URL": empty_db_url}
    result = subprocess.run(
        [sys.executable, "-m", "conveyor.cli", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "error: the database is not migrated: run `conveyor migrate` first" in result.stderr
