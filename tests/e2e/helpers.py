"""What the end-to-end tests share: the runner as a real process (`conveyor run`, its JSON log
read back), and a tenant, a workflow and its events through the SQL API. The `runners` and
`ready_runners` fixtures that start RunnerProcesses are tests/conftest.py's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
from cryptography.fernet import Fernet
from psycopg.types.json import Jsonb

Conn = psycopg.Connection[dict[str, Any]]
# The secret key every test runner gets (CONVEYOR_SECRET_KEY): connections stored with it decrypt.
KEY = Fernet.generate_key().decode()


class RunnerProcess:
    def __init__(self, db_url: str, log_path: Path, **env: str) -> None:
        self.log_path = log_path
        self.log = log_path.open("w")
        environment = {
            **os.environ,
            "CONVEYOR_DATABASE_URL": db_url,
            "CONVEYOR_ALLOW_PRIVATE_NETWORKS": "127.0.0.1/32",
            "CONVEYOR_POLL_INTERVAL": "0.2",
            "CONVEYOR_HEARTBEAT_INTERVAL": "1",
            "CONVEYOR_SECRET_KEY": KEY,
            **env,
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "conveyor.cli", "run"],
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.startswith("{")]

    def ready(self) -> bool:
        return any(line["msg"] == "runner ready" for line in self.lines())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self.log.close()
        return code


def setup_tenant(conn: Conn, tenant_id: str = "acme") -> str:
    conn.execute("insert into conveyor.tenants (tenant_id, name) values (%s, %s)", (tenant_id, tenant_id))
    return tenant_id


def publish(conn: Conn, tenant_id: str, step: dict[str, Any], slug: str = "notify") -> int:
    document = {
        "slug": slug,
        "name": slug,
        "trigger": {"event": "crm.contact.created"},
        "steps": [{"id": "notify", **step}],
    }
    row = conn.execute("select * from conveyor.publish(%s, %s)", (tenant_id, Jsonb(document))).fetchone()
    assert row is not None
    return int(row["workflow_id"])


def emit(conn: Conn, tenant_id: str, payload: dict[str, Any]) -> None:
    conn.execute("select conveyor.emit(%s, 'crm.contact.created', %s)", (tenant_id, Jsonb(payload)))


def executions(conn: Conn) -> list[dict[str, Any]]:
    return conn.execute("select * from conveyor.executions order by execution_id").fetchall()


def all_final(conn: Conn, count: int) -> list[dict[str, Any]] | None:
    rows = executions(conn)
    if len(rows) == count and all(r["status"] in ("completed", "failed") for r in rows):
        return rows
    return None


def publish_by_hand(conn: Conn) -> str:
    """Tenant acme, its manual workflow `by-hand` (keeps trigger.payload.who) and an API key for it."""
    conn.execute("insert into conveyor.tenants (tenant_id, name) values ('acme', 'Acme')")
    document = {
        "slug": "by-hand",
        "name": "By hand",
        "trigger": {"manual": True},
        "steps": [{"id": "keep", "set": {"who": "{{trigger.payload.who}}"}}],
    }
    conn.execute("select conveyor.publish('acme', %s)", (Jsonb(document),))
    row = conn.execute("select conveyor.create_api_key('acme', 'ci') as k").fetchone()
    assert row is not None
    return str(row["k"])
