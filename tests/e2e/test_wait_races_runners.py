"""Waits for events with real runners: two runner processes (their listeners dispatch, their
loops tick) while triggers and replies arrive from two connections at random 0-50 ms gaps
and other events of the same tenant flow every ~5 ms. No reply is lost, no wait resumed
twice (the SQL-level races are in tests/sql/test_wait_races.py, the large version in
bench/wait_races.py)."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import psycopg
import pytest
from bench.wait_races import TENANT, answer, ask, ask_workflow, emit, outcomes, publish
from psycopg.rows import dict_row

from tests.runner.helpers import wait_for

Conn = psycopg.Connection[dict[str, Any]]

pytestmark = pytest.mark.slow

TRIALS = 30


def test_two_runners_lose_no_reply(db_url: str, conn: Conn, runners: Any) -> None:
    conn.execute("select conveyor.create_tenant(%s, 'Acme')", (TENANT,))
    workflow = ask_workflow()
    workflow["steps"][0]["wait_for_event"]["timeout"] = "5s"
    publish(conn, TENANT, workflow)
    started = [runners(), runners()]
    wait_for(lambda: all(r.ready() for r in started))

    stop = threading.Event()

    def noise() -> None:
        with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as c:
            while not stop.is_set():
                emit(c, "chat.typing.started", {"q": "noise"})
                time.sleep(0.005)

    noisy = threading.Thread(target=noise)
    noisy.start()
    rng = random.Random(5)
    try:
        with (
            psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as asker,
            psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as answerer,
        ):
            for i in range(TRIALS):
                ask(asker, f"q{i}")
                time.sleep(rng.uniform(0, 0.05))
                answer(answerer, f"q{i}")
    finally:
        stop.set()
        noisy.join()

    questions = [f"q{i}" for i in range(TRIALS)]

    def all_finished() -> dict[str, dict[str, Any]] | None:
        result = outcomes(conn)
        done = len(result) == TRIALS and all(o["status"] == "completed" for o in result.values())
        return result if done else None

    result = wait_for(all_finished, timeout=30)
    lost = sorted(q for q in questions if result[q]["vars"].get("r") != "event")
    twice = sorted(q for q in questions if result[q]["waits_done"] != 1)
    assert (lost, twice) == ([], [])
    for r in started:
        assert r.stop() == 0
