"""The Conveyor side of bench/e2e_peers.py, small: a burst and a short steady rate through
real runner processes and the benchmark's own HTTP sink (no bench dependencies needed)."""

from __future__ import annotations

import argparse
import math

import pytest
from bench.e2e_measure import percentile, sink
from bench.e2e_peers import report
from bench.e2e_systems import Conveyor

pytestmark = pytest.mark.slow


def test_the_conveyor_side_of_the_end_to_end_benchmark_measures_every_event(db_url: str) -> None:
    with sink() as http:
        system = Conveyor(db_url, http, processes=1, concurrency=4)
        phases = system.run(http, burst=40, rate=40, seconds=0.5)

    burst, steady = phases["burst"].summary(), phases["steady"].summary()
    assert burst["events"] == burst["arrived"] == 40
    assert steady["events"] == steady["arrived"] == 20
    for summary in (burst, steady):
        assert summary["throughput"] > 0
        assert 0 < summary["p50"] <= summary["p99"] <= summary["max"] < 60_000

    body = report(
        {"conveyor": {"burst": burst, "steady": steady}},
        {"conveyor": system.description},
        argparse.Namespace(burst=40, rate=40.0, seconds=0.5),
    )
    assert "| conveyor |" in body and "conveyor run" in body


def test_percentiles_of_sorted_latencies() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))
