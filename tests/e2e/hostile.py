"""The hostile-tenant suite's platform: two tenants and one real runner.

Tenant A (`ta`) has a webhook workflow that the runner performs against a real local HTTP
server; tenant B (`tb`) attacks. `Platform.victim_latency` is the suite's measure: the
seconds from A's event being committed to A's webhook arriving, which must stay within
VICTIM_BOUND_S whatever B does. The `platform` fixture is shared through conftest.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from tests.e2e.helpers import RunnerProcess
from tests.runner.helpers import LocalHTTP, Reply, local_http, wait_for

Conn = psycopg.Connection[dict[str, Any]]

# How long tenant A may wait for its action while tenant B attacks (the runner polls every
# 0.2 s here; an undisturbed event is performed in tens of milliseconds).
VICTIM_BOUND_S = 5.0

FINAL = ("completed", "failed", "cancelled", "timed_out")


class Platform:
    """Two tenants and one runner: A (`ta`) has a webhook workflow, B (`tb`) attacks."""

    def __init__(self, conn: Conn, db_url: str, server: LocalHTTP, runner: RunnerProcess) -> None:
        self.conn = conn
        self.db_url = db_url
        self.server = server
        self.runner = runner
        self.served = 0

    def publish(self, tenant: str, document: dict[str, Any]) -> None:
        self.conn.execute("select conveyor.publish(%s, %s)", (tenant, Jsonb(document)))

    def refusal(self, tenant: str, document: dict[str, Any] | str) -> str:
        """The problems publish lists for a document it refuses (a document given as JSON
        text is sent as such: json.dumps cannot write one nested 1,000 deep)."""
        value = document if isinstance(document, str) else Jsonb(document)
        with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
            self.conn.execute("select conveyor.publish(%s, %s::jsonb)", (tenant, value))
        return str(refused.value.diag.message_detail)

    def emit(self, tenant: str, event_type: str, payload: dict[str, Any] | None = None) -> None:
        self.conn.execute("select conveyor.emit(%s, %s, %s)", (tenant, event_type, Jsonb(payload or {})))

    def burst(self, tenant: str, event_type: str, payload: dict[str, Any], n: int) -> None:
        """Emits `n` events with this payload, committed together (one NOTIFY, as a bulk
        import of the platform's would be)."""
        self.conn.execute(
            "select conveyor.emit(%s, %s, %s) from generate_series(1, %s)",
            (tenant, event_type, Jsonb(payload), n),
        )

    def victim_latency(self) -> float:
        """Emits A's event and returns the seconds until A's webhook arrived."""
        self.served += 1
        start = time.monotonic()
        self.emit("ta", "a.contact.created", {"n": self.served})
        wait_for(lambda: len(self.server.requests_to("/a")) >= self.served, timeout=VICTIM_BOUND_S * 12)
        return self.server.requests_to("/a")[-1].at - start

    def count(self, sql: str, *params: Any) -> int:
        row = self.conn.execute(sql, params).fetchone()
        assert row is not None
        return int(next(iter(row.values())))

    def final_executions(self, tenant: str, n: int, timeout: float = 60) -> list[dict[str, Any]]:
        """The tenant's `n` executions once all are final, oldest first."""

        def done() -> list[dict[str, Any]] | None:
            rows = self.conn.execute(
                "select * from conveyor.executions where tenant_id = %s order by execution_id", (tenant,)
            ).fetchall()
            return rows if len(rows) == n and all(r["status"] in FINAL for r in rows) else None

        rows: list[dict[str, Any]] = wait_for(done, timeout=timeout)
        return rows

    @contextmanager
    def attacking(self, attack: Callable[[Conn], None]) -> Iterator[list[BaseException]]:
        """Runs `attack` over and over on a connection of its own in a thread while the
        block runs; yields the list its unexpected errors are collected in."""
        stop = threading.Event()
        errors: list[BaseException] = []
        rounds = 0

        def loop() -> None:
            nonlocal rounds
            with psycopg.connect(self.db_url, autocommit=True, row_factory=dict_row) as own:
                while not stop.is_set():
                    try:
                        attack(own)
                    except BaseException as exc:
                        errors.append(exc)
                        return
                    rounds += 1

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            wait_for(lambda: rounds > 0 or errors, timeout=30)  # the attack is under way
            yield errors
        finally:
            stop.set()
            thread.join(timeout=30)


@pytest.fixture
def platform(conn: Conn, db_url: str, tmp_path: Path) -> Iterator[Platform]:
    for tenant in ("ta", "tb"):
        conn.execute(
            "insert into conveyor.tenants (tenant_id, name) values (%s, %s)", (tenant, tenant.upper())
        )
    with local_http() as server:
        server.routes["/a"] = Reply(status=200, body={"ok": True})
        runner = RunnerProcess(db_url, tmp_path / "runner.log")
        try:
            wait_for(runner.ready, timeout=30)
            p = Platform(conn, db_url, server, runner)
            p.publish(
                "ta",
                {
                    "slug": "hello",
                    "name": "Hello",
                    "trigger": {"event": "a.contact.created"},
                    "steps": [
                        {
                            "id": "hook",
                            "action": "webhook.send",
                            "with": {"url": server.url("/a"), "body": {}},
                        }
                    ],
                },
            )
            assert p.victim_latency() < VICTIM_BOUND_S
            yield p
            assert runner.proc.poll() is None, "the runner exited during the attack"
        finally:
            if runner.proc.poll() is None:
                runner.proc.kill()
                runner.proc.wait()
