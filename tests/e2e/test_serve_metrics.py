"""GET /metrics of `conveyor serve` (runner/conveyor/serve/db_metrics.py): the database's
side in Prometheus text, read when scraped; an operator's token only."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from conveyor.serve import ServeSettings, serve_in_thread, tokens
from tests.e2e.console_helpers import SECRET, finish_action, two_tenants
from tests.sql.interpreter_helpers import AMOUNT, Conn, flow, start


@pytest.fixture
def server(db_url: str, conn: Conn) -> Iterator[str]:
    settings = ServeSettings(db_url, "127.0.0.1", 0, pool_size=2, token_secret=SECRET)
    with serve_in_thread(settings) as running:
        yield running.url


def scrape(server: str) -> dict[str, float]:
    token = tokens.sign(SECRET, "acme", "ops", 60, operator=True)
    got = httpx.get(server + "/metrics", headers={"Authorization": f"Bearer {token}"})
    assert got.status_code == 200, got.text
    samples = {}
    for line in got.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_metrics_show_queue_events_executions_and_failures(server: str, conn: Conn) -> None:
    seeded: dict[str, Any] = two_tenants(conn)
    failing = start(conn, "acme", flow(conn, "acme", slug="breaks"), AMOUNT)
    finish_action(conn, failing, {"ok": False, "retryable": False, "error": "gone"})
    conn.execute("insert into conveyor.events (tenant_id, event_type) values ('acme', 'crm.contact.created')")
    samples = scrape(server)
    assert samples['conveyor_queue_depth{queue="conveyor_actions"}'] == 1  # seeded["waiting"]'s action
    assert samples['conveyor_queue_oldest_age_seconds{queue="conveyor_actions"}'] >= 0
    assert samples["conveyor_events_pending"] == 1
    assert samples['conveyor_executions_active{status="waiting"}'] == 1
    assert samples['conveyor_executions_finished_last_hour{status="completed"}'] == 2
    assert samples['conveyor_workflow_failures_last_hour{tenant="acme",workflow="breaks"}'] == 1
    assert samples["conveyor_schedule_lag_seconds"] == 0
    assert seeded["waiting"]


def test_metrics_refuse_a_tenants_token(server: str, conn: Conn) -> None:
    conn.execute("insert into conveyor.tenants (tenant_id, name) values ('acme', 'Acme')")
    admin = tokens.sign(SECRET, "acme", "ann", 60)
    assert httpx.get(server + "/metrics", headers={"Authorization": f"Bearer {admin}"}).status_code == 403
    assert httpx.get(server + "/metrics").status_code == 401
