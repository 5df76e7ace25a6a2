"""The production-shaped topology of docker-compose.yml, without Docker: an external PostgreSQL
cluster (the session's, pg_cron preloaded), `conveyor migrate` as its own one-shot step on a
blank database, two `conveyor run` runners and `conveyor serve`, every one a real process. One
workflow goes through it: set up with the CLI (docs/integrate.md's commands), started over HTTP
with an API key, its webhook action performed exactly once by one of the two runners."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import psycopg
import yaml
from psycopg.rows import dict_row

from tests.conftest import free_port
from tests.e2e.helpers import RunnerProcess
from tests.e2e.test_serve_lifecycle import start_serve
from tests.runner.helpers import Reply, local_http, wait_for


def conveyor(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """One `conveyor ...` process, as an operator (or a one-shot container) runs it."""
    return subprocess.run(
        [sys.executable, "-m", "conveyor.cli", *args],
        env={**os.environ, "CONVEYOR_DATABASE_URL": db_url, "CONVEYOR_TENANT": "acme"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_migrate_two_runners_and_serve_run_a_workflow(empty_db_url: str, tmp_path: Path) -> None:
    # the migrator: its own step, before anything else touches the database; again: nothing to do
    migrated = conveyor(empty_db_url, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert "applied    migrations/0001_" in migrated.stdout
    again = conveyor(empty_db_url, "migrate")
    assert again.returncode == 0 and "up to date: nothing to apply" in again.stdout

    with local_http() as receiver:
        receiver.routes["/hook"] = Reply(status=200, body={"ok": True})
        document = {
            "slug": "hello",
            "name": "Says hello",
            "trigger": {"manual": True},
            "steps": [
                {
                    "id": "call",
                    "action": "webhook.send",
                    "with": {"url": receiver.url("/hook"), "body": {"who": "{{trigger.payload.who}}"}},
                }
            ],
        }
        path = tmp_path / "hello.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        for step in (["tenants", "add", "acme"], ["workflows", "apply", "-f", str(path)]):
            done = conveyor(empty_db_url, *step)
            assert done.returncode == 0, (step, done.stderr)
        key = json.loads(conveyor(empty_db_url, "api-keys", "add", "ci", "--json").stdout)["key"]

        runners = [RunnerProcess(empty_db_url, tmp_path / f"runner{i}.log") for i in range(2)]
        port = free_port()
        serve = start_serve(empty_db_url, port)
        try:
            wait_for(lambda: all(r.ready() for r in runners), timeout=30)
            with psycopg.connect(empty_db_url, autocommit=True, row_factory=dict_row) as conn:
                live = conn.execute("select count(*) as n from conveyor.live_runners()").fetchone()
                assert live == {"n": 2}
                answer = httpx.post(
                    f"http://127.0.0.1:{port}/api/workflows/hello/runs",
                    headers={"Authorization": f"Bearer {key}"},
                    json={"who": "Ada"},
                    timeout=10,
                )
                assert answer.status_code in (200, 201, 202), answer.text
                execution_id = answer.json()["execution_id"]

                def finished() -> dict[str, Any] | None:
                    row: dict[str, Any] | None = conn.execute(
                        "select status, error from conveyor.executions where execution_id = %s",
                        (execution_id,),
                    ).fetchone()
                    return row if row and row["status"] in ("completed", "failed") else None

                final = wait_for(finished, timeout=30)
                assert final["status"] == "completed", final["error"]
            [received] = receiver.requests_to("/hook")
            assert received.json() == {"who": "Ada"}
            performed = [line for r in runners for line in r.lines() if line["msg"] == "action succeeded"]
            assert [p["execution"] for p in performed] == [execution_id]  # one runner, once
            listed = json.loads(conveyor(empty_db_url, "executions", "list", "--json").stdout)
            assert [(e["id"], e["status"]) for e in listed] == [(execution_id, "completed")]
        finally:
            codes = [r.stop() for r in runners]
            serve.send_signal(signal.SIGTERM)
            serve_code = serve.wait(timeout=30)
        assert codes == [0, 0] and serve_code == 0
