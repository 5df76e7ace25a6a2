"""bench/row_floor.py, small: the engine's run and the plain statements' run leave the same
rows (the floor is only a floor if it writes what the engine writes)."""

from __future__ import annotations

import pytest
from bench.row_floor import engine, floor, prepare, rows_written

pytestmark = pytest.mark.slow

WORKFLOWS = 40
EXPECTED = {
    "executions completed": WORKFLOWS,
    "step_runs prepare completed": WORKFLOWS,
    "step_runs notify completed": WORKFLOWS,
    "step_runs check completed": WORKFLOWS,
    "events undispatched": 0,
    "queue": 0,
    "archive": WORKFLOWS,
}


def test_the_engine_side_runs_every_workflow_to_its_end(db_url: str) -> None:
    prepare(db_url, WORKFLOWS)
    engine(db_url, WORKFLOWS)
    assert rows_written(db_url) == EXPECTED


def test_the_plain_statements_write_the_rows_the_engine_writes(db_url: str) -> None:
    prepare(db_url, WORKFLOWS)
    floor(db_url, WORKFLOWS)
    assert rows_written(db_url) == EXPECTED
