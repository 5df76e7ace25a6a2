"""The writer's linger (runner/writer.py Writer.linger): under load it waits up to WRITE_LINGER_S for
a fuller batch of results, because a write-back's cost has a fixed part per call; a lone
result, a full batch or a stopping runner is written at once."""

from __future__ import annotations

import threading

from conveyor.runner import Runner, RunnerConfig
from conveyor.runner.shared import Lease as _Lease
from conveyor.runner.writer import WRITE_LINGER_S


class _CountingEvent(threading.Event):
    """The writer's wake-up event, recording how long the writer asked to wait."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        return super().wait(0)


def runner_with(batch_size: int, in_flight: int, finished: int) -> tuple[Runner, _CountingEvent]:
    runner = Runner(RunnerConfig("postgresql://localhost/unused", batch_size=batch_size))
    for msg_id in range(in_flight):
        runner.state.leases[msg_id] = _Lease(started=0.0, until=60.0, timeout_s=30.0)
    runner.state.finished = [object()] * finished  # type: ignore[list-item]
    event = _CountingEvent()
    runner.shared.results = event
    return runner, event


def test_a_lone_result_is_written_at_once() -> None:
    runner, event = runner_with(batch_size=4, in_flight=0, finished=1)
    runner.writer.linger()
    assert event.waits == []


def test_under_load_the_writer_waits_a_bounded_time_for_a_fuller_batch() -> None:
    runner, event = runner_with(batch_size=4, in_flight=3, finished=1)
    runner.writer.linger()
    assert event.waits and all(w is not None and 0 < w <= WRITE_LINGER_S for w in event.waits)


def test_a_full_batch_or_a_stopping_runner_is_written_at_once() -> None:
    runner, event = runner_with(batch_size=4, in_flight=3, finished=4)
    runner.writer.linger()
    assert event.waits == []
    runner, event = runner_with(batch_size=4, in_flight=3, finished=1)
    runner.stopping.set()
    runner.writer.linger()
    assert event.waits == []
