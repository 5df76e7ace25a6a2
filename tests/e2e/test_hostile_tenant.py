"""A hostile tenant against one real runner: while tenant B attacks, tenant A is served.

Each attack is one the hardening issue found; for each, tenant A's event is dispatched
and its webhook performed by the runner within VICTIM_BOUND_S, and the attack itself ends
bounded (refused at publish, or failed with the limit named) instead of running on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.e2e.test_runner_e2e import RunnerProcess
from tests.runner.helpers import LocalHTTP, Reply, local_http, wait_for

Conn = psycopg.Connection[dict[str, Any]]

pytestmark = pytest.mark.slow

# How long tenant A may wait for its action while tenant B attacks (the runner polls every
# 0.2 s here; an undisturbed event is performed in tens of milliseconds).
VICTIM_BOUND_S = 5.0


class Platform:
    """Two tenants and one runner: A (`ta`) has a webhook workflow, B (`tb`) attacks."""

    def __init__(self, conn: Conn, server: LocalHTTP, runner: RunnerProcess) -> None:
        self.conn = conn
        self.server = server
        self.runner = runner
        self.served = 0

    def publish(self, tenant: str, document: dict[str, Any]) -> None:
        self.conn.execute("select conveyor.publish(%s, %s)", (tenant, Jsonb(document)))

    def emit(self, tenant: str, event_type: str, payload: dict[str, Any] | None = None) -> None:
        self.conn.execute("select conveyor.emit(%s, %s, %s)", (tenant, event_type, Jsonb(payload or {})))

    def victim_latency(self) -> float:
        """Emits A's event and returns the seconds until A's webhook arrived."""
        self.served += 1
        start = time.monotonic()
        self.emit("ta", "a.contact.created", {"n": self.served})
        wait_for(lambda: len(self.server.requests_to("/a")) >= self.served, timeout=VICTIM_BOUND_S * 4)
        return self.server.requests_to("/a")[-1].at - start

    def count(self, sql: str, *params: Any) -> int:
        row = self.conn.execute(sql, params).fetchone()
        assert row is not None
        return int(next(iter(row.values())))


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
            p = Platform(conn, server, runner)
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


def test_a_fan_out_storm_stays_in_its_chain_budget_and_a_is_served(platform: Platform) -> None:
    platform.publish(
        "tb",
        {
            "slug": "storm",
            "name": "Storm",
            "trigger": {"event": "b.fan.go"},
            "steps": [{"id": "e", "emit": {"event": "b.fan.go"}, "next": "e"}],
            "settings": {"max_steps": 30},
        },
    )
    platform.emit("tb", "b.fan.go")
    time.sleep(0.5)  # the storm is under way

    assert platform.victim_latency() < VICTIM_BOUND_S

    # the storm ends by itself: its chain's budget (1,000 emitted events) is spent
    wait_for(
        lambda: (
            platform.count(
                "select count(*) from conveyor.events where tenant_id = 'tb' and dispatched_at is null"
            )
            == 0
            and platform.count(
                "select count(*) from conveyor.executions where tenant_id = 'tb' and status = 'running'"
            )
            == 0
        ),
        timeout=120,
    )
    assert platform.count("select count(*) from conveyor.events where tenant_id = 'tb'") <= 1001
    assert platform.count("select count(*) from conveyor.executions where tenant_id = 'tb'") <= 1001
    assert platform.victim_latency() < VICTIM_BOUND_S
