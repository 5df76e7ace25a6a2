"""The writer: writes finished results back, in batches, on its own connection.

Write-back is the engine's heaviest statement (it applies results and runs the executions
on to their next action); on a connection of its own it never holds up ticking and
reading, and whatever finishes while it writes is the next batch. A result the database
refuses is written as a dead letter instead (docs/queue.md), so no action is performed
again and again for want of a result."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import psycopg

from conveyor import queue as q
from conveyor.actions import Outcome
from conveyor.metrics import Metrics
from conveyor.runner.config import RunnerConfig
from conveyor.runner.shared import ROLLED_BACK, Finished, Shared, connect, first_line, is_transient

log = logging.getLogger("conveyor.runner")

# Under load the writer waits up to this long for a batch of CONVEYOR_BATCH_SIZE results
# (see Writer.linger): the latency it adds to a workflow's next step is bounded by it.
WRITE_LINGER_S = 0.003


class Writer:
    def __init__(self, shared: Shared, config: RunnerConfig, metrics: Metrics, runner_id: str) -> None:
        self.shared = shared
        self.config = config
        self.metrics = metrics
        self.runner_id = runner_id
        self.stop = threading.Event()

    def loop(self) -> None:
        """The writer thread's body: connect, write what finished, wait for more; on errors
        back off and reconnect, keeping the results not yet written."""
        backoff, failed = 0.5, False
        results = self.shared.results
        while not self.stop.is_set():
            try:
                with connect(self.config.database_url) as conn:
                    if failed:
                        log.info("reconnected", extra={"runner": self.runner_id, "connection": "write-back"})
                    backoff, failed = 0.5, False
                    while not self.stop.is_set():
                        self.flush(conn)
                        results.wait(1.0)
                        results.clear()
                        self.linger()
                    self.flush(conn)  # what finished before the stop
            except psycopg.OperationalError as exc:
                failed = True
                log.warning(
                    "database unavailable for write-back; retrying",
                    extra={"error": first_line(exc), "retry_in_s": backoff},
                )
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            except Exception:  # never lose the writer: log, back off, go on
                failed = True
                log.exception("write-back failed unexpectedly; retrying")
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def linger(self) -> None:
        """Under load, wait up to WRITE_LINGER_S for a fuller batch: a write-back costs the
        database a fixed part per call besides its part per result. Never while nothing
        else is in flight (a lone result is written at once) or the runner is stopping."""
        shared = self.shared
        deadline = time.monotonic() + WRITE_LINGER_S
        while not self.stop.is_set() and not shared.stopping.is_set():
            with shared.lock:
                if len(shared.state.finished) >= self.config.batch_size or shared.state.inflight == 0:
                    return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            shared.results.wait(left)
            shared.results.clear()

    def flush(self, conn: psycopg.Connection[Any]) -> None:
        shared = self.shared
        with shared.lock:
            batch, shared.state.finished = shared.state.finished, []
            shared.state.writing += len(batch)
        if not batch:
            return
        try:
            self.write(conn, batch)
        except ROLLED_BACK as exc:
            # A deadlock or serialization failure with another runner's transaction: the
            # write-back was rolled back as a whole; keep the results and write them again
            # at once (the connection is fine, no reconnect).
            log.info("write-back rolled back; retrying", extra={"error": first_line(exc)})
            with shared.lock:
                shared.state.finished[:0] = batch
            shared.results.set()
        except BaseException:
            with shared.lock:
                shared.state.finished[:0] = batch
            raise
        finally:
            with shared.lock:
                shared.state.writing -= len(batch)
            shared.wake.set()  # the loop may be waiting for the last results to be written

    def write(self, conn: psycopg.Connection[Any], batch: list[Finished]) -> None:
        # notification deliveries (rare) have a write-back of their own; a batch of step
        # results alone goes on as it always did
        if any(f.message.delivery_id is not None for f in batch):
            steps = [f for f in batch if f.message.delivery_id is None]
            self.write_deliveries(conn, [f for f in batch if f.message.delivery_id is not None])
            if steps:
                self.write(conn, steps)
            return
        try:
            rows = q.write_back(conn, [result_of(f) for f in batch], self.config.max_output_bytes)
        except psycopg.Error as exc:
            # conveyor.write_back contains what it refuses to one result; what reaches here
            # was refused before it ran (the parameter itself), or is transient (raised: the
            # batch is written again, after a reconnect when the connection is lost)
            if is_transient(exc):
                raise
            if len(batch) > 1:
                for single in batch:  # isolate the result the database refuses
                    self.write(conn, [single])
                return
            self._write_refused(conn, batch[0], exc)
            return
        by_msg = {f.message.msg_id: f for f in batch}
        with self.shared.lock:  # written (and archived): nothing left to renew
            for msg_id in by_msg:
                self.shared.state.unwritten.pop(msg_id, None)
            # the executions moved on, perhaps into a delay: the loop checks what falls due
            self.shared.wants.due_check = True
        for msg_id, _step_run_id, outcome in rows:
            self.metrics.written(outcome)
            finished = by_msg.get(msg_id)
            if finished is not None and outcome == "dead_lettered":
                log.warning("dead letter kept", extra={**finished.message.log_fields(), "outcome": outcome})
            elif finished is not None and outcome != "applied":
                log.info(
                    "result ignored by the database (late, duplicate or cancelled)",
                    extra={**finished.message.log_fields(), "outcome": outcome},
                )

    def write_deliveries(self, conn: psycopg.Connection[Any], batch: list[Finished]) -> None:
        """Notification delivery results (conveyor.write_back_deliveries, which contains a
        result it refuses to its own delivery)."""
        rows = q.write_back_deliveries(conn, [result_of(f) for f in batch], self.config.max_output_bytes)
        with self.shared.lock:
            for finished in batch:
                self.shared.state.unwritten.pop(finished.message.msg_id, None)
            self.shared.wants.due_check = True
        for _msg_id, _delivery_id, outcome in rows:
            self.metrics.written(outcome)

    def _write_refused(self, conn: psycopg.Connection[Any], refused: Finished, exc: psycopg.Error) -> None:
        """A single result the database refuses: write a dead letter in its place."""
        if refused.dead_letter == "result_refused":
            raise exc  # even the dead letter: the database cannot take results; kept, retried
        error = f"the database refused the action's result ({exc.sqlstate}: {first_line(exc)})"
        log.error(
            "the database refused a result; writing a dead letter instead (the action is not performed again)",
            extra={**refused.message.log_fields(), "error": error},
        )
        substitute = Outcome(
            ok=False, output=None, retryable=False, error={"message": error, "type": "result_refused"}
        )
        self.write(conn, [Finished(refused.message, substitute, refused.duration_ms, "result_refused")])


def result_of(finished: Finished) -> dict[str, Any]:
    """A finished action as conveyor.write_back takes it."""
    outcome = finished.outcome
    message = finished.message
    result: dict[str, Any] = {"msg_id": message.msg_id}
    if message.delivery_id is not None:
        result["delivery_id"] = message.delivery_id
    else:
        result["step_run_id"] = message.step_run_id
    result["ok"] = outcome.ok
    result["output"] = outcome.output
    if not outcome.ok:
        result["retryable"] = outcome.retryable
        result["retry_after_s"] = outcome.retry_after_s
        result["error"] = outcome.error
    if finished.dead_letter is not None:
        result["dead_letter"] = finished.dead_letter
    return result
