"""The runner's metrics endpoint: Prometheus text, and health that follows the database."""

from __future__ import annotations

import time

import httpx
import pytest

from conveyor.errors import ConveyorError
from conveyor.metrics import Metrics, MetricsServer, parse_address
from tests.conftest import free_port


def test_health_follows_the_database_connection_and_the_loops_liveness() -> None:
    metrics = Metrics()
    address = f"127.0.0.1:{free_port()}"
    server = MetricsServer(metrics, address, stale_after_s=0.5)
    server.start()
    try:
        assert httpx.get(f"http://{address}/healthz").status_code == 503  # not connected yet
        metrics.connected, metrics.last_loop = True, time.monotonic()
        assert httpx.get(f"http://{address}/healthz").status_code == 200
        time.sleep(0.6)  # the loop stopped passing: stuck
        assert httpx.get(f"http://{address}/healthz").status_code == 503
        metrics.last_loop, metrics.connected = time.monotonic(), False  # lost the database
        assert httpx.get(f"http://{address}/healthz").status_code == 503
        assert httpx.get(f"http://{address}/nope").status_code == 404
    finally:
        server.stop()


def test_metrics_render_counters_with_escaped_labels() -> None:
    metrics = Metrics()
    metrics.action_done("email.send", "retryable", 0.25)
    metrics.action_done("email.send", "retryable", 0.5)
    metrics.action_done('we"ird', "succeeded", 1.0)
    metrics.written("ignored", 3)
    text = metrics.render()
    assert 'conveyor_runner_actions_total{action="email.send",outcome="retryable"} 2' in text
    assert 'conveyor_runner_action_seconds_total{action="email.send"} 0.750000' in text
    assert 'conveyor_runner_actions_total{action="we\\"ird",outcome="succeeded"} 1' in text
    assert 'conveyor_runner_write_backs_total{outcome="ignored"} 3' in text


def test_a_bad_metrics_address_is_refused() -> None:
    assert parse_address("0.0.0.0:9464") == ("0.0.0.0", 9464)
    assert parse_address(":9464") == ("127.0.0.1", 9464)
    with pytest.raises(ConveyorError, match="expected host:port"):
        parse_address("9464x")
