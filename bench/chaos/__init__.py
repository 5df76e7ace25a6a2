"""Chaos runs: sustained load with repeated faults, and the properties that must survive them.

    .venv/bin/python -m bench.chaos                 # full scale (make chaos), all five scenarios
    .venv/bin/python -m bench.chaos --quick         # suite scale
    .venv/bin/python -m bench.chaos kill outage     # only some scenarios

tests/e2e/test_chaos.py calls the same scenario functions at a size that fits the suite.
"""

from bench.chaos.checks import Outcome
from bench.chaos.scenarios import (
    Shape,
    kill_runners,
    receiver_outage,
    restart_postgres,
    terminate_backends,
)
from bench.chaos.schedules import schedule_race

__all__ = [
    "Outcome",
    "Shape",
    "kill_runners",
    "receiver_outage",
    "restart_postgres",
    "schedule_race",
    "terminate_backends",
]
