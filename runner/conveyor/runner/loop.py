"""The runner's main loop and how its parts fit together.

One loop, in the main thread, owns the database connection:

* heartbeat (`conveyor.runners`), every `heartbeat_interval`;
* `conveyor.tick()` (resume due delays + schedules, and dispatch while the listener does
  not own dispatch; skipped while it does not exist) when the last tick said time-driven
  work falls due (a delay resumes on time, not on the next poll), and every
  `poll_interval` as a fallback;
* read a batch from the pgmq queue `conveyor_actions` whenever there is a free slot and
  NOTIFY `conveyor_actions` arrived (conveyor.send_actions sends it), the last read left a
  backlog, or the poll interval passed; each message stays invisible for its own
  `timeout_s` plus `visibility_margin` (kept so by the LeaseKeeper, leases.py);
* hand each action to the ActionPool (pool.py; at most `concurrency` at once).

Beside it: the Writer (writer.py) writes results back on its own connection, the
Listener (listener.py) dispatches new events on its own connection.

SIGTERM / Ctrl-C: stop reading, let in-flight actions finish within `shutdown_grace`,
write their results, exit 0. A lost database, or any error of the database or of the
loop: log it, reconnect with backoff, go on; results not yet written are kept and written
after reconnecting. The runner exits on its own only for configuration it cannot use (an
invalid setting or connection string, a database that is not migrated).
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import socket
import threading
import time
import uuid
from types import FrameType
from typing import Any

import psycopg

from conveyor import __version__
from conveyor import queue as q
from conveyor.actions import Environment
from conveyor.errors import ConveyorError
from conveyor.metrics import Metrics, MetricsServer
from conveyor.migrate import schema_version
from conveyor.netguard import NetworkPolicy
from conveyor.runner.config import RunnerConfig
from conveyor.runner.features import EngineFeatures
from conveyor.runner.leases import LeaseKeeper
from conveyor.runner.listener import DispatchOwner, Listener
from conveyor.runner.pool import ActionPool
from conveyor.runner.shared import ROLLED_BACK, Shared, connect, first_line
from conveyor.runner.writer import Writer
from conveyor.secrets import SecretBox

log = logging.getLogger("conveyor.runner")

# At most one due check (conveyor.next_work_due_at) per this many seconds: a busy runner
# would otherwise ask after every dispatch and write-back. A delay created by either is
# resumed at most this late.
DUE_CHECK_INTERVAL = 0.02


class ReadResult(enum.Enum):
    DRAINED = "drained"  # the queue had less than was asked for: wait for a reason to read
    BACKLOG = "backlog"  # slots were full or the read rolled back: read again next turn
    NOT_READY = "not_ready"  # the database has no write_back yet: nothing is read


class Runner:
    def __init__(self, url: str | RunnerConfig, *, heartbeat_interval: float = 10.0) -> None:
        self.config = url if isinstance(url, RunnerConfig) else RunnerConfig(url, heartbeat_interval)
        self.config.validate()
        self.url = self.config.database_url
        self.runner_id = uuid.uuid4()
        self.shared = Shared()
        self.state = self.shared.state
        self.stopping = self.shared.stopping
        self.wake = self.shared.wake
        try:
            policy = NetworkPolicy.parse(self.config.allow_private_networks)
        except ValueError as exc:
            raise ConveyorError(str(exc)) from exc
        box = SecretBox(self.config.secret_key) if self.config.secret_key.strip() else None
        self.env = Environment.create(policy)
        self.metrics = Metrics()
        self.metrics_server = (
            MetricsServer(
                self.metrics,
                self.config.metrics_address,
                stale_after_s=max(self.config.heartbeat_interval, self.config.poll_interval) * 3 + 5,
            )
            if self.config.metrics_address
            else None
        )
        self.features = EngineFeatures()
        self.leases = LeaseKeeper(self.shared, self.config.visibility_margin)
        self.pool = ActionPool(self.shared, self.config, self.env, box, self.metrics)
        self.writer = Writer(self.shared, self.config, self.metrics, str(self.runner_id))
        self.listener = Listener(self.shared, self.url, self.config.poll_interval)
        self.read_result = ReadResult.DRAINED
        self._stop_deadline: float | None = None
        self._warned_not_ready = False

    # --- signals ---------------------------------------------------------------------

    def request_stop(self, signum: int, _frame: FrameType | None = None) -> None:
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        self.stopping.set()
        self.wake.set()

    # --- the loop --------------------------------------------------------------------

    def run(self) -> None:
        """Perform actions until stopped; reconnect with backoff when the database goes away
        or fails. Raises ConveyorError only for configuration it cannot use."""
        backoff = 0.5
        # after other errors (a statement failing, a bug of the loop): grows while they
        # repeat, whatever the connection does, and starts again after a quiet while
        error_backoff, served_since = 0.5, 0.0
        announced = False
        listener = threading.Thread(target=self.listener.loop, name="conveyor-listen", daemon=True)
        writer = threading.Thread(target=self.writer.loop, name="conveyor-write-back", daemon=True)
        if self.metrics_server is not None:
            self.metrics_server.start()
        writer.start()
        try:
            while True:
                if self.stopping.is_set() and self._drained():
                    break
                try:
                    with connect(self.url) as conn:
                        version = schema_version(conn)
                        if version is None:
                            raise ConveyorError("the database is not migrated: run `conveyor migrate` first")
                        if not announced:
                            log.info(
                                "runner ready",
                                extra={
                                    "runner": str(self.runner_id),
                                    "schema": version,
                                    "concurrency": self.config.concurrency,
                                    "batch_size": self.config.batch_size,
                                },
                            )
                            announced = True
                            listener.start()
                        else:
                            log.info("reconnected", extra={"runner": str(self.runner_id)})
                        backoff = 0.5
                        served_since = time.monotonic()
                        self._serve(conn)
                        conn.execute("select conveyor.runner_stopped(%s)", (self.runner_id,))
                        break
                except ConveyorError:
                    raise  # configuration it cannot use (the database is not migrated)
                except Exception as exc:
                    self.metrics.connected = False
                    if self.stopping.is_set() and self._past_deadline():
                        log.warning(
                            "database unavailable while stopping; unwritten results are lost"
                            " and their actions will be performed again",
                            extra={"results": len(self.state.finished)},
                        )
                        break
                    if isinstance(exc, psycopg.OperationalError):
                        wait = backoff
                        log.warning(
                            "database unavailable; retrying",
                            extra={"error": first_line(exc), "retry_in_s": wait},
                        )
                        backoff = min(backoff * 2, 10.0)
                    else:
                        if served_since and time.monotonic() - served_since > 30.0:
                            error_backoff = 0.5
                        wait = error_backoff
                        error_backoff = min(error_backoff * 2, 10.0)
                        _log_loop_error(exc, wait)
                    if self.stopping.is_set():
                        time.sleep(min(wait, 1.0))
                    else:
                        self.stopping.wait(wait)
        finally:
            self._shut_down(writer)
        log.info("runner stopped", extra={"runner": str(self.runner_id)})

    def _shut_down(self, writer: threading.Thread) -> None:
        self.writer.stop.set()
        self.shared.results.set()
        writer.join(timeout=5.0)
        with self.shared.lock:
            unwritten = len(self.state.finished) + self.state.writing
        if unwritten:
            log.warning(
                "stopping with results not written back; their actions will be performed again",
                extra={"results": unwritten},
            )
        self.metrics.connected = False
        self.env.close()
        if self.metrics_server is not None:
            self.metrics_server.stop()

    def _drained(self) -> bool:
        with self.shared.lock:
            return self.state.drained

    def _past_deadline(self) -> bool:
        if self._stop_deadline is None:
            self._stop_deadline = time.monotonic() + self.config.shutdown_grace
        return time.monotonic() >= self._stop_deadline

    def _serve(self, conn: psycopg.Connection[Any]) -> None:
        next_heartbeat = 0.0
        next_poll = 0.0
        next_due = float("inf")  # when conveyor.tick() said time-driven work falls due
        next_due_check = 0.0
        features = self.features
        shared = self.shared
        self.metrics.connected = True
        while True:
            self.wake.clear()
            now = time.monotonic()
            with self.metrics.lock:
                self.metrics.last_loop = now
                self.metrics.inflight = self.state.inflight
            if now >= next_heartbeat:
                conn.execute(
                    "select conveyor.runner_heartbeat(%s, %s, %s, %s)",
                    (self.runner_id, socket.gethostname(), os.getpid(), __version__),
                )
                next_heartbeat = now + self.config.heartbeat_interval
            next_renewal = self.leases.renew(conn)
            if self.stopping.is_set():
                if self._stopped_draining(next_renewal):
                    return
                continue

            poll_due = now >= next_poll
            if poll_due:
                features.refresh(conn)
                next_poll = now + self.config.poll_interval
            with shared.lock:
                wants = shared.wants
                want_tick, want_read = wants.tick, wants.read
                wants.tick = wants.read = False
                due_check = wants.due_check and now >= next_due_check
                due_check_pending = wants.due_check and not due_check
                if due_check:
                    wants.due_check = False
            # Read first: actions the listener's dispatch queued go out before any tick. A
            # due time may be a message becoming visible (a retry's backoff ending), which no
            # notification announces: read then too.
            if want_read or poll_due or self.read_result is ReadResult.BACKLOG or now >= next_due:
                self.read_result = self.read_and_start(conn)
            if features.tick and due_check and not (want_tick or poll_due or now >= next_due):
                # work moved on elsewhere: only ask when the next time-driven work falls due
                due_in = q.next_due_in(conn) if features.due_check else 0.0
                next_due_check = time.monotonic() + DUE_CHECK_INTERVAL
                if due_in is not None:
                    next_due = min(next_due, time.monotonic() + due_in)
                now = time.monotonic()
            if features.tick and (want_tick or poll_due or now >= next_due):
                try:
                    due_in = q.tick(conn, dispatch=self._tick_dispatches())
                    next_due = float("inf") if due_in is None else time.monotonic() + due_in
                    next_due_check = time.monotonic() + DUE_CHECK_INTERVAL
                except ROLLED_BACK as exc:
                    log.info("tick rolled back; retrying", extra={"error": first_line(exc)})
                    shared.notify(read=True, tick=True)
            wake_at = min(next_heartbeat, next_poll, next_renewal, next_due)
            if due_check_pending:
                wake_at = min(wake_at, next_due_check)
            self.wake.wait(max(0.0, wake_at - time.monotonic()))

    def _stopped_draining(self, next_renewal: float) -> bool:
        """While stopping: whether the loop is done (everything written, or the grace
        period over); otherwise wait a little for in-flight actions."""
        with self.shared.lock:
            inflight = self.state.inflight
        if self._drained():  # every result written back by the writer
            return True
        if self._past_deadline():
            log.warning(
                "shutdown grace period over; abandoning in-flight actions"
                " (their messages become visible again after the visibility timeout)",
                extra={"inflight": inflight},
            )
            return True
        self.wake.wait(min(0.1, max(0.0, next_renewal - time.monotonic())))
        return False

    def _tick_dispatches(self) -> bool | None:
        """The tick's p_dispatch: whether it dispatches new events too (None: the installed
        tick always does)."""
        if not self.features.tick_skips_dispatch:
            return None
        return self.listener.owner(time.monotonic()) is DispatchOwner.TICKS

    def read_and_start(self, conn: psycopg.Connection[Any]) -> ReadResult:
        """Read batches of actions while slots are free and start them."""
        if not self.features.write_back:
            if not self._warned_not_ready:
                log.warning("conveyor.write_back() does not exist yet; not reading actions")
                self._warned_not_ready = True
            return ReadResult.NOT_READY
        while not self.stopping.is_set():
            with self.shared.lock:
                inflight = self.state.inflight
            free = self.config.concurrency - inflight
            wanted = min(self.config.batch_size, free)
            # Under load, read in batches rather than one message per finished action: each
            # read is a round trip and a statement, whatever its size. Until half a batch of
            # slots is free, the actions in flight keep the runner busy anyway.
            if wanted <= 0 or (inflight > 0 and wanted < self.config.low_water):
                return ReadResult.BACKLOG
            try:
                messages = q.read_batch(conn, wanted, self.config.visibility_margin)
            except ROLLED_BACK as exc:
                log.info("read rolled back; retrying", extra={"error": first_line(exc)})
                return ReadResult.BACKLOG
            self.pool.start_batch(conn, messages)
            if len(messages) < wanted:
                return ReadResult.DRAINED
        return ReadResult.DRAINED


def _log_loop_error(exc: Exception, wait: float) -> None:
    if isinstance(exc, psycopg.Error):
        log.warning(
            "database error; retrying",
            extra={"error": first_line(exc), "sqlstate": exc.sqlstate, "retry_in_s": wait},
        )
    else:
        log.exception("the runner's loop failed unexpectedly; retrying", extra={"retry_in_s": wait})
