"""bench/noisy_neighbour.py, small: the three phases (B alone, A's burst alone, both) through
real runner processes and the benchmark's own sink, every event's webhook counted."""

from __future__ import annotations

import argparse

import pytest
from bench.noisy_neighbour import Deliveries, report, run

pytestmark = pytest.mark.slow


def test_the_three_phases_measure_every_event_of_both_tenants(db_url: str) -> None:
    result = run(db_url, burst=300, rate=20, seconds=1.0, runners=1, latency_ms=1)
    summary = result.summary()

    assert len(result.a_alone.committed) == len(result.a_both.committed) == 300
    assert len(result.b_alone.committed) >= 15  # 20 a second for 1 s, give or take the last one
    # B's stream started before A's burst and ran on after it drained
    since, until = result.a_both_window
    assert min(result.b_both.committed.values()) < since < until < max(result.b_both.committed.values())
    assert summary["lost"] == summary["twice"] == 0
    assert summary["events"] == 600 + len(result.b_alone.committed) + len(result.b_both.committed)
    assert summary["b_alone_events"] == len(result.b_alone.committed)
    assert 0 < summary["b_during_events"] < len(result.b_both.committed)
    for key in ("b_alone", "b_during"):
        assert 0 < summary[f"{key}_p50"] <= summary[f"{key}_p99"] < 60_000
    assert summary["a_alone_per_s"] == pytest.approx(300 / summary["a_alone_s"])
    assert summary["a_both_s"] == pytest.approx(until - since)
    assert summary["p99_ratio"] == pytest.approx(summary["b_during_p99"] / summary["b_alone_p99"])

    body = report(summary, argparse.Namespace(runners=1, latency_ms=1.0, rate=20.0, burst=300, seconds=1.0))
    assert "| B alone |" in body and "| both (B during A's burst) |" in body
    assert "every webhook arrived exactly once: yes" in body


def test_deliveries_count_the_lost_the_doubled_and_the_strays_and_window_latencies() -> None:
    phase = Deliveries({0: 10.0, 1: 11.0, 2: 12.0, 3: 13.0})
    phase.arrivals = {0: [10.05], 1: [11.2, 11.9], 3: [13.01], 9: [14.0]}
    assert phase.lost() == 1  # seq 2
    assert phase.twice() == 2  # seq 1 arrived twice, seq 9 was never committed
    assert phase.latencies_ms() == pytest.approx([10.0, 50.0, 200.0])  # each seq's first arrival
    assert phase.latencies_ms(since=10.5, until=12.5) == pytest.approx([200.0])
    assert Deliveries({}).latencies_ms() == [] and Deliveries({}).lost() == 0
