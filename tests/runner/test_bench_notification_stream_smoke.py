"""bench/notification_stream.py, small: a few SSE clients on one `conveyor serve` process get
every committed notification of their user exactly once, and the run is measured."""

from __future__ import annotations

from bench.notification_stream import measure, report


def test_the_notification_stream_benchmark_delivers_everything_and_measures(db_url: str) -> None:
    results = measure(db_url, clients=6, baseline_clients=2, rate=20.0, duration_s=1.0)
    assert [r["clients"] for r in results] == [2, 6]
    for r in results:
        assert r["committed"] == 20 and r["delivered"] == 20, r
        assert (r["lost"], r["duplicates"], r["misdelivered"], r["failed_clients"]) == (0, 0, 0, 0), r
        assert r["p50_ms"] > 0 and r["cpu_s"] > 0
    body = report(results)
    assert "| 6 | 20 | 20 | 0 | 0 | 0 |" in body and "Targets" in body
