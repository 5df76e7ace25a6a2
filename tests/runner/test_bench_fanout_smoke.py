"""bench/fanout.py, small: both measurements run to their end through the same code as the
full run (a for_each through a real runner against separate executions; the join cost of
internal, action and trigger-copy fan-outs), each checking that every child completed."""

from __future__ import annotations

import pytest
from bench.fanout import create_tenant, join_costs, throughput

pytestmark = pytest.mark.slow


def test_the_for_each_and_the_separate_executions_all_complete_through_a_runner(db_url: str) -> None:
    create_tenant(db_url)
    separate, fanned = throughput(
        db_url, items=30, rounds=1, runner_count=1, latency_ms=1, runner_concurrency=16
    )
    assert separate > 0 and fanned > 0


def test_each_join_cost_case_completes_its_small_and_large_fan_outs(db_url: str) -> None:
    create_tenant(db_url)
    costs = join_costs(db_url, small=4, large=20, rounds=1)
    assert [(label, top) for label, (top, _, _) in costs.items()] == [
        ("internal (set)", 20),
        ("action (write-backs of 50)", 20),
        ("trigger copy: items from {{trigger.payload.ids}}, set", 20),
    ]
    assert all(small.wall_us > 0 and large.wall_us > 0 for _, small, large in costs.values())
