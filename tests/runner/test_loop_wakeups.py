"""A finished action wakes the runner's loop only when the loop could read: once half a
batch of slots is free (runner/pool.py ActionPool.perform, loop.py Runner.read_and_start). Waking it for every
finished action would only cost it a turn; the writer is woken for every result."""

from __future__ import annotations

from conveyor import queue as q
from conveyor.runner import Runner, RunnerConfig
from conveyor.runner.shared import Lease as _Lease


def test_the_loop_is_woken_once_half_a_batch_of_slots_is_free() -> None:
    runner = Runner(RunnerConfig("postgresql://localhost/unused", concurrency=4, batch_size=4))
    for msg_id in range(1, 5):  # every slot busy
        runner.state.leases[msg_id] = _Lease(started=0.0, until=60.0, timeout_s=30.0)

    def finish(msg_id: int) -> tuple[bool, bool]:
        runner.wake.clear()
        runner.shared.results.clear()
        message = q.Message(msg_id=msg_id, read_ct=1, raw={"action": "webhook.send", "connection": "gone"})
        # a connection that cannot be used: the action fails at once, without the network
        runner.pool.perform(message, "connection 'gone' does not exist")
        return runner.wake.is_set(), runner.shared.results.is_set()

    assert finish(1) == (False, True)  # one slot free: less than half a batch
    assert finish(2) == (True, True)  # two free: the loop can read a batch of at least two
    assert [f.message.msg_id for f in runner.state.finished] == [1, 2]
    assert not runner.state.finished[0].outcome.ok and sorted(runner.state.unwritten) == [1, 2]


def test_a_stopping_runner_is_woken_by_every_finished_action() -> None:
    runner = Runner(RunnerConfig("postgresql://localhost/unused", concurrency=4, batch_size=4))
    for msg_id in range(1, 5):
        runner.state.leases[msg_id] = _Lease(started=0.0, until=60.0, timeout_s=30.0)
    runner.stopping.set()
    runner.pool.perform(q.Message(msg_id=1, read_ct=1, raw={}), "connection 'gone' does not exist")
    assert runner.wake.is_set()  # it waits for in-flight actions to drain
