"""`conveyor run`: the runner process.

One loop, in the main thread, owns the database connection:

* heartbeat (`conveyor.runners`), every `heartbeat_interval`;
* `conveyor.tick()` (resume due delays + schedules, and dispatch while the listener does
  not; skipped while it does not exist) when the last tick said time-driven work falls
  due (a delay resumes on time, not on the next poll), and every `poll_interval` as a
  fallback;
* read a batch from the pgmq queue `conveyor_actions` whenever there is a free slot and
  NOTIFY `conveyor_actions` arrived (conveyor.send_actions sends it), the last read was
  full, or the poll interval passed;
  each message stays invisible for its own `timeout_s` plus `visibility_margin`;
* hand each action to a worker thread (at most `concurrency` at once).

A writer thread, on a connection of its own, writes the finished results back in
batches through `conveyor.write_back` (the heaviest statement: it runs each execution
on to its next action), so that writing never holds up ticking and reading.

Why threads: actions are blocking I/O (sockets, smtplib); a bounded set of
daemon threads keeps every action library usable as is, the GIL is irrelevant for
network waits, and a thread that outlives the shutdown grace period cannot hold the
process (its message simply becomes visible again).

A third thread LISTENs on its own connection: NOTIFY `conveyor_wakeup` (new events) makes
it run `conveyor.dispatch()` there and then, and wake the loop to read the actions that
started; NOTIFY `conveyor_actions` only wakes the loop. It dispatches on every
notification, on (re)connecting, and after `poll_interval` without one; while it has done
so within two poll intervals without failing, the loop's ticks leave events to it, so the
loop never spends a burst's dispatch time not reading actions (and takes over when the
listener is down, failing or stuck).
A message the runner must not perform (a malformed body, or one read_actions marks: too
many deliveries, its step run no longer waiting) is written back as a dead letter instead
of being performed; a result the database still refuses is written back as one too
(docs/queue.md), so no action is performed again and again for want of a result.

SIGTERM / Ctrl-C: stop reading, let in-flight actions finish within `shutdown_grace`,
write their results, exit 0. A lost database, or any error of the database or of the
loop: log it, reconnect with backoff, go on; results not yet written are kept and written
after reconnecting. The runner exits on its own only for configuration it cannot use (an
invalid setting or connection string, a database that is not migrated).
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from conveyor import __version__
from conveyor import queue as q
from conveyor.actions import ActionRequest, Environment, Outcome, perform
from conveyor.connections import Connection
from conveyor.errors import ConveyorError
from conveyor.metrics import Metrics, MetricsServer
from conveyor.migrate import schema_version
from conveyor.netguard import NetworkPolicy
from conveyor.results import MAX_OUTPUT_BYTES, MIN_OUTPUT_BYTES
from conveyor.secrets import SecretBox

log = logging.getLogger("conveyor.runner")

# A statement the server rolled back because it lost a race with another transaction
# (class 40: deadlock, serialization failure). The connection is fine: do it again.
_ROLLED_BACK = (psycopg.errors.TransactionRollback, psycopg.errors.DeadlockDetected)


@dataclass
class RunnerConfig:
    """The runner's settings. `conveyor run` fills them from flags, each of which defaults to
    one environment variable (named next to each field); the secret key is read from the
    environment only, so it never appears in a process list."""

    database_url: str
    heartbeat_interval: float = 10.0  # CONVEYOR_HEARTBEAT_INTERVAL
    concurrency: int = 16  # CONVEYOR_CONCURRENCY
    batch_size: int = 10  # CONVEYOR_BATCH_SIZE
    poll_interval: float = 1.0  # CONVEYOR_POLL_INTERVAL
    visibility_margin: float = 30.0  # CONVEYOR_VISIBILITY_MARGIN
    shutdown_grace: float = 30.0  # CONVEYOR_SHUTDOWN_GRACE
    secret_key: str = ""  # CONVEYOR_SECRET_KEY
    allow_private_networks: str = ""  # CONVEYOR_ALLOW_PRIVATE_NETWORKS
    metrics_address: str = ""  # CONVEYOR_METRICS_ADDRESS (host:port; empty: off)
    max_output_bytes: int = MAX_OUTPUT_BYTES  # CONVEYOR_MAX_OUTPUT_BYTES

    def validate(self) -> None:
        if self.concurrency < 1:
            raise ConveyorError("CONVEYOR_CONCURRENCY must be at least 1")
        if self.batch_size < 1:
            raise ConveyorError("CONVEYOR_BATCH_SIZE must be at least 1")
        if self.poll_interval <= 0 or self.heartbeat_interval <= 0:
            raise ConveyorError("CONVEYOR_POLL_INTERVAL and CONVEYOR_HEARTBEAT_INTERVAL must be positive")
        if self.visibility_margin < 0 or self.shutdown_grace < 0:
            raise ConveyorError("CONVEYOR_VISIBILITY_MARGIN and CONVEYOR_SHUTDOWN_GRACE must not be negative")
        if self.max_output_bytes < MIN_OUTPUT_BYTES:
            raise ConveyorError(f"CONVEYOR_MAX_OUTPUT_BYTES must be at least {MIN_OUTPUT_BYTES}")
        try:
            conninfo_to_dict(self.database_url)
        except psycopg.ProgrammingError as exc:
            raise ConveyorError(
                f"the database URL is not a valid connection string: {_first_line(exc)}"
            ) from exc


@dataclass
class _Flags:
    want_read: bool = True
    want_tick: bool = True
    # Work was dispatched or written back elsewhere (the listener, the writer): it may have
    # created a delay or timeout falling due before the one the last tick reported.
    want_due_check: bool = False


# Under load the writer waits up to this long for a batch of CONVEYOR_BATCH_SIZE results
# (see Runner._linger): the latency it adds to a workflow's next step is bounded by it.
WRITE_LINGER_S = 0.003

# At most one due check (conveyor.next_work_due_at) per this many seconds: a busy runner
# would otherwise ask after every dispatch and write-back. A delay created by either is
# resumed at most this late.
DUE_CHECK_INTERVAL = 0.02


@dataclass
class _Finished:
    message: q.Message
    outcome: Outcome
    duration_ms: int
    # the reason the message is dead-lettered instead of performed (docs/queue.md), or None
    dead_letter: str | None = None


@dataclass
class _Lease:
    """An in-flight message: when it started and until when it is invisible to others."""

    started: float
    until: float
    timeout_s: float
    hung: bool = False


@dataclass
class _State:
    leases: dict[int, _Lease] = field(default_factory=dict)
    # Leases of finished actions whose results are not written yet: still renewed, so a
    # slow write-back never lets another runner perform the action again.
    unwritten: dict[int, _Lease] = field(default_factory=dict)
    finished: list[_Finished] = field(default_factory=list)
    writing: int = 0  # results taken by the writer and not yet written (or put back)

    @property
    def inflight(self) -> int:
        return len(self.leases)


class Runner:
    def __init__(self, url: str | RunnerConfig, *, heartbeat_interval: float = 10.0) -> None:
        self.config = url if isinstance(url, RunnerConfig) else RunnerConfig(url, heartbeat_interval)
        self.config.validate()
        self.url = self.config.database_url
        self.heartbeat_interval = self.config.heartbeat_interval
        self.runner_id = uuid.uuid4()
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.flags = _Flags()
        self.lock = threading.Lock()
        self.state = _State()
        try:
            self.policy = NetworkPolicy.parse(self.config.allow_private_networks)
        except ValueError as exc:
            raise ConveyorError(str(exc)) from exc
        self.box = SecretBox(self.config.secret_key) if self.config.secret_key.strip() else None
        self.env = Environment.create(self.policy)
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
        self._stop_deadline: float | None = None
        self._write_back_ready = False
        self._tick_ready = False
        self._tick_can_skip_dispatch = False
        self._due_check_ready = False
        # when the listener last dispatched without failing (None: not since it failed or
        # lost its connection); while that is recent, ticks leave new events to it
        self._listener_dispatched_at: float | None = None
        self._warned_no_write_back = False
        self._backlog = False
        self._low_water = max(1, min(self.config.batch_size, self.config.concurrency) // 2)
        self._tasks: queue.SimpleQueue[tuple[q.Message, Connection | str | None]] = queue.SimpleQueue()
        self._results = threading.Event()  # wakes the writer: results are waiting
        self._writer_stop = threading.Event()
        self._idle_threads = 0

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
        listener = threading.Thread(target=self._listen, name="conveyor-listen", daemon=True)
        writer = threading.Thread(target=self._write_loop, name="conveyor-write-back", daemon=True)
        if self.metrics_server is not None:
            self.metrics_server.start()
        writer.start()
        try:
            while True:
                if self.stopping.is_set() and self._drained():
                    break
                try:
                    with self._connect() as conn:
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
                            extra={"error": _first_line(exc), "retry_in_s": wait},
                        )
                        backoff = min(backoff * 2, 10.0)
                    else:
                        if served_since and time.monotonic() - served_since > 30.0:
                            error_backoff = 0.5
                        wait = error_backoff
                        error_backoff = min(error_backoff * 2, 10.0)
                        if isinstance(exc, psycopg.Error):
                            log.warning(
                                "database error; retrying",
                                extra={
                                    "error": _first_line(exc),
                                    "sqlstate": exc.sqlstate,
                                    "retry_in_s": wait,
                                },
                            )
                        else:
                            log.exception(
                                "the runner's loop failed unexpectedly; retrying", extra={"retry_in_s": wait}
                            )
                    if self.stopping.is_set():
                        time.sleep(min(wait, 1.0))
                    else:
                        self.stopping.wait(wait)
        finally:
            self._writer_stop.set()
            self._results.set()
            writer.join(timeout=5.0)
            with self.lock:
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
        log.info("runner stopped", extra={"runner": str(self.runner_id)})

    def _drained(self) -> bool:
        with self.lock:
            return self.state.inflight == 0 and not self.state.finished and self.state.writing == 0

    def _past_deadline(self) -> bool:
        if self._stop_deadline is None:
            self._stop_deadline = time.monotonic() + self.config.shutdown_grace
        return time.monotonic() >= self._stop_deadline

    def _serve(self, conn: psycopg.Connection[Any]) -> None:
        next_heartbeat = 0.0
        next_poll = 0.0
        next_due = float("inf")  # when conveyor.tick() said time-driven work falls due
        next_due_check = 0.0
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
            next_renewal = self._renew(conn)
            if self.stopping.is_set():
                with self.lock:
                    inflight = self.state.inflight
                if self._drained():  # every result written back by the writer
                    return
                if self._past_deadline():
                    log.warning(
                        "shutdown grace period over; abandoning in-flight actions"
                        " (their messages become visible again after the visibility timeout)",
                        extra={"inflight": inflight},
                    )
                    return
                self.wake.wait(min(0.1, max(0.0, next_renewal - time.monotonic())))
                continue

            poll_due = now >= next_poll
            if poll_due:
                # Until the engine's functions exist (a database migrated by an older
                # version), the runner only heartbeats; once they exist, they stay.
                self._write_back_ready = self._write_back_ready or (
                    q.has_function(conn, "write_back") and q.has_function(conn, "read_actions")
                )
                self._tick_ready = self._tick_ready or q.has_function(conn, "tick")
                self._tick_can_skip_dispatch = self._tick_can_skip_dispatch or q.has_function(
                    conn, "tick", argument="p_dispatch"
                )
                self._due_check_ready = self._due_check_ready or q.has_function(conn, "next_work_due_at")
                next_poll = now + self.config.poll_interval
            with self.lock:
                want_tick, want_read = self.flags.want_tick, self.flags.want_read
                self.flags.want_tick = self.flags.want_read = False
                due_check = self.flags.want_due_check and now >= next_due_check
                due_check_pending = self.flags.want_due_check and not due_check
                if due_check:
                    self.flags.want_due_check = False
            # Read first: actions the listener's dispatch queued go out before any tick. A
            # due time may be a message becoming visible (a retry's backoff ending), which no
            # notification announces: read then too.
            if want_read or poll_due or self._backlog or now >= next_due:
                self._read_and_start(conn)
            if self._tick_ready and due_check and not (want_tick or poll_due or now >= next_due):
                # work moved on elsewhere: only ask when the next time-driven work falls due
                due_in = q.next_due_in(conn) if self._due_check_ready else 0.0
                next_due_check = time.monotonic() + DUE_CHECK_INTERVAL
                if due_in is not None:
                    next_due = min(next_due, time.monotonic() + due_in)
                now = time.monotonic()
            if self._tick_ready and (want_tick or poll_due or now >= next_due):
                try:
                    due_in = q.tick(
                        conn,
                        dispatch=self._tick_dispatches(time.monotonic())
                        if self._tick_can_skip_dispatch
                        else None,
                    )
                    next_due = float("inf") if due_in is None else time.monotonic() + due_in
                    next_due_check = time.monotonic() + DUE_CHECK_INTERVAL
                except _ROLLED_BACK as exc:
                    log.info("tick rolled back; retrying", extra={"error": _first_line(exc)})
                    self._notify(read=True, tick=True)
            wake_at = min(next_heartbeat, next_poll, next_renewal, next_due)
            if due_check_pending:
                wake_at = min(wake_at, next_due_check)
            self.wake.wait(max(0.0, wake_at - time.monotonic()))

    def _renew(self, conn: psycopg.Connection[Any]) -> float:
        """Extend the visibility of in-flight messages about to reappear; returns when to look again.

        A healthy runner keeps its messages invisible while it performs them, however long
        an action takes (an SMTP server may be slow in every phase); a dead runner stops
        renewing, so its messages reappear at most `visibility_margin` after its last renewal.
        An action running longer than three times its timeout is considered hung: its
        lease is no longer renewed and another runner performs it again.
        """
        margin = self.config.visibility_margin
        threshold = max(1.0, margin / 2)
        extend = q.visibility_timeout(0, max(margin, 2.0))
        now = time.monotonic()
        renew: list[int] = []
        hung: list[int] = []
        next_check = now + 3600.0
        with self.lock:
            for msg_id, lease in self.state.leases.items():
                if lease.hung:
                    continue
                if lease.until - now > threshold:
                    next_check = min(next_check, lease.until - threshold)
                elif now - lease.started < 3 * lease.timeout_s + margin:
                    renew.append(msg_id)
                else:
                    lease.hung = True
                    hung.append(msg_id)
            for msg_id, lease in self.state.unwritten.items():  # the action is done: never hung
                if lease.until - now > threshold:
                    next_check = min(next_check, lease.until - threshold)
                else:
                    renew.append(msg_id)
        if renew:
            q.extend_visibility(conn, renew, extend)
            with self.lock:
                for msg_id in renew:
                    renewed = self.state.leases.get(msg_id) or self.state.unwritten.get(msg_id)
                    if renewed is not None:
                        renewed.until = now + extend
                        next_check = min(next_check, renewed.until - threshold)
        for msg_id in hung:
            log.warning(
                "action still running after three times its timeout; no longer keeping its"
                " message invisible (another runner will perform it again)",
                extra={"msg_id": msg_id},
            )
        return next_check

    def _read_and_start(self, conn: psycopg.Connection[Any]) -> None:
        self._backlog = False
        if not self._write_back_ready:
            if not self._warned_no_write_back:
                log.warning("conveyor.write_back() does not exist yet; not reading actions")
                self._warned_no_write_back = True
            return
        while not self.stopping.is_set():
            with self.lock:
                inflight = self.state.inflight
            free = self.config.concurrency - inflight
            wanted = min(self.config.batch_size, free)
            # Under load, read in batches rather than one message per finished action: each
            # read is a round trip and a statement, whatever its size. Until half a batch of
            # slots is free, the actions in flight keep the runner busy anyway.
            if wanted <= 0 or (inflight > 0 and wanted < self._low_water):
                self._backlog = True
                return
            try:
                messages = q.read_batch(conn, wanted, self.config.visibility_margin)
            except _ROLLED_BACK as exc:
                log.info("read rolled back; retrying", extra={"error": _first_line(exc)})
                self._backlog = True
                return
            runnable = []
            for message in messages:
                verdict = message.verdict()
                if verdict is None:
                    runnable.append(message)
                else:
                    self._dead_letter(message, *verdict)
            if runnable:
                connections = self._load_connections(conn, runnable)
                for message in runnable:
                    self._start(message, connections)
            if len(messages) < wanted:
                return

    def _dead_letter(self, message: q.Message, reason: str, error: str) -> None:
        """Hand the writer a dead letter for a message that is not performed: the database
        fails its step with `error` (when the step still waits for it) and keeps it."""
        log.warning("message dead-lettered", extra={**message.log_fields(), "reason": reason, "error": error})
        outcome = Outcome(ok=False, output=None, retryable=False, error={"message": error, "type": reason})
        now = time.monotonic()
        lease = _Lease(now, now + q.visibility_timeout(message.timeout_s, self.config.visibility_margin), 0.0)
        with self.lock:
            self.state.finished.append(_Finished(message, outcome, 0, dead_letter=reason))
            self.state.unwritten[message.msg_id] = lease
        self._results.set()

    def _load_connections(
        self, conn: psycopg.Connection[Any], messages: list[q.Message]
    ) -> dict[tuple[str, str], Connection | str]:
        """The connections a batch names, decrypted; or why one is unusable (a message)."""
        keys = {
            (str(m.body.get("tenant_id")), str(m.body["connection"]))
            for m in messages
            if m.body.get("connection")
        }
        if not keys:
            return {}
        tenants, names = zip(*keys, strict=True)
        rows = conn.execute(
            "select c.tenant_id, c.name, c.kind, c.config, c.secret"
            " from conveyor.connections as c"
            " join unnest(%s::text[], %s::text[]) as k (tenant_id, name)"
            " on c.tenant_id = k.tenant_id and c.name = k.name",
            (list(tenants), list(names)),
        ).fetchall()
        found: dict[tuple[str, str], Connection | str] = {
            key: f"tenant {key[0]!r} has no connection named {key[1]!r}" for key in keys
        }
        for tenant_id, name, kind, config, token in rows:
            secret: dict[str, Any] = {}
            if token is not None:
                if self.box is None:
                    found[(tenant_id, name)] = (
                        f"connection {name!r} has a secret but CONVEYOR_SECRET_KEY is not set on this runner"
                    )
                    continue
                try:
                    secret = self.box.decrypt(token)
                except ConveyorError as exc:
                    found[(tenant_id, name)] = f"connection {name!r}: {exc}"
                    continue
            found[(tenant_id, name)] = Connection(tenant_id, name, kind, dict(config), secret)
        return found

    def _start(self, message: q.Message, connections: dict[tuple[str, str], Connection | str]) -> None:
        body = message.body
        connection: Connection | str | None = None
        if body.get("connection"):
            connection = connections[(str(body.get("tenant_id")), str(body["connection"]))]
        now = time.monotonic()
        lease = _Lease(
            now,
            now + q.visibility_timeout(message.timeout_s, self.config.visibility_margin),
            message.timeout_s,
        )
        with self.lock:
            self.state.leases[message.msg_id] = lease
            idle = self._idle_threads > 0
            if idle:
                self._idle_threads -= 1
        if idle:
            self._tasks.put((message, connection))
        else:
            # One more daemon thread: there are never more than the actions in flight at
            # once (a hung action keeps its thread; its slot is counted until it returns).
            thread = threading.Thread(
                target=self._work, args=(message, connection), name="conveyor-action", daemon=True
            )
            thread.start()

    def _work(self, message: q.Message, connection: Connection | str | None) -> None:
        """An action thread: performs its first action, then waits for the next one.

        Handing an action to an idle thread is a queue put: starting a thread per action
        makes the loop wait until the new thread runs, which on a busy machine is the
        slowest step of all."""
        while True:
            self._perform(message, connection)  # counts this thread idle as it finishes
            message, connection = self._tasks.get()

    def _perform(self, message: q.Message, connection: Connection | str | None) -> None:
        started = time.monotonic()
        body = message.body
        try:
            if isinstance(connection, str):
                outcome = Outcome(
                    ok=False,
                    output=None,
                    retryable=False,
                    error={"message": connection, "type": "connection_unavailable"},
                )
            else:
                raw_input = body.get("input")
                request = ActionRequest(
                    action=str(body.get("action", "")),
                    input=raw_input if isinstance(raw_input, dict) else {},
                    idempotency_key=str(body.get("idempotency_key") or f"msg:{message.msg_id}"),
                    timeout_s=message.timeout_s,
                    connection=connection,
                    tenant_id=str(body.get("tenant_id", "")),
                    execution_id=body.get("execution_id"),
                    step_id=str(body.get("step_id", "")),
                    attempt=int(body.get("attempt") or 1),
                )
                if raw_input is not None and not isinstance(raw_input, dict):
                    outcome = Outcome(
                        ok=False,
                        output=None,
                        error={
                            "message": "the action's input must be a JSON object",
                            "type": "invalid_input",
                        },
                    )
                else:
                    outcome = perform(request, self.env)
        except Exception as exc:  # never lose a slot
            log.exception("performing an action failed unexpectedly", extra=message.log_fields())
            outcome = Outcome(
                ok=False, output=None, retryable=True, error={"message": repr(exc), "type": "internal"}
            )
        finished = _Finished(message, outcome, int((time.monotonic() - started) * 1000))
        fields = {**message.log_fields(), "duration_ms": finished.duration_ms}
        self.metrics.action_done(
            str(body.get("action", "")),
            "succeeded" if outcome.ok else "retryable" if outcome.retryable else "permanent",
            finished.duration_ms / 1000,
        )
        if outcome.ok:
            log.info("action succeeded", extra=fields)
        else:
            error = outcome.error or {}
            log.warning(
                "action failed",
                extra={
                    **fields,
                    "retryable": outcome.retryable,
                    "error": error.get("message"),
                    "error_type": error.get("type"),
                },
            )
        with self.lock:
            self.state.finished.append(finished)
            lease = self.state.leases.pop(message.msg_id, None)
            if lease is not None and not lease.hung:
                self.state.unwritten[message.msg_id] = lease
            self._idle_threads += 1
            # The loop reads again once half a batch of slots is free (see _read_and_start):
            # waking it for every finished action would only cost it a turn.
            wake = self.config.concurrency - self.state.inflight >= self._low_water
        self._results.set()
        if wake or self.stopping.is_set():
            self.wake.set()

    def _write_loop(self) -> None:
        """The writer: writes finished results back, in batches, on its own connection.

        Write-back is the engine's heaviest statement (it applies results and runs the
        executions on to their next action); on a connection of its own it never holds up
        ticking and reading, and whatever finishes while it writes is the next batch.
        """
        backoff, failed = 0.5, False
        while not self._writer_stop.is_set():
            try:
                with self._connect() as conn:
                    if failed:
                        log.info(
                            "reconnected", extra={"runner": str(self.runner_id), "connection": "write-back"}
                        )
                    backoff, failed = 0.5, False
                    while not self._writer_stop.is_set():
                        self._flush(conn)
                        self._results.wait(1.0)
                        self._results.clear()
                        self._linger()
                    self._flush(conn)  # what finished before the stop
            except psycopg.OperationalError as exc:
                failed = True
                log.warning(
                    "database unavailable for write-back; retrying",
                    extra={"error": _first_line(exc), "retry_in_s": backoff},
                )
                self._writer_stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            except Exception:  # never lose the writer: log, back off, go on
                failed = True
                log.exception("write-back failed unexpectedly; retrying")
                self._writer_stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _linger(self) -> None:
        """Under load, wait up to WRITE_LINGER_S for a fuller batch: a write-back costs the
        database a fixed part per call besides its part per result. Never while nothing
        else is in flight (a lone result is written at once) or the runner is stopping."""
        deadline = time.monotonic() + WRITE_LINGER_S
        while not self._writer_stop.is_set() and not self.stopping.is_set():
            with self.lock:
                if len(self.state.finished) >= self.config.batch_size or self.state.inflight == 0:
                    return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._results.wait(left)
            self._results.clear()

    def _flush(self, conn: psycopg.Connection[Any]) -> None:
        with self.lock:
            batch, self.state.finished = self.state.finished, []
            self.state.writing += len(batch)
        if not batch:
            return
        try:
            self._write(conn, batch)
        except _ROLLED_BACK as exc:
            # A deadlock or serialization failure with another runner's transaction: the
            # write-back was rolled back as a whole; keep the results and write them again
            # at once (the connection is fine, no reconnect).
            log.info("write-back rolled back; retrying", extra={"error": _first_line(exc)})
            with self.lock:
                self.state.finished[:0] = batch
            self._results.set()
        except BaseException:
            with self.lock:
                self.state.finished[:0] = batch
            raise
        finally:
            with self.lock:
                self.state.writing -= len(batch)
            self.wake.set()  # the loop may be waiting for the last results to be written

    def _write(self, conn: psycopg.Connection[Any], batch: list[_Finished]) -> None:
        try:
            rows = q.write_back(conn, [_result(f) for f in batch], self.config.max_output_bytes)
        except psycopg.Error as exc:
            # conveyor.write_back contains what it refuses to one result; what reaches here
            # was refused before it ran (the parameter itself), or is transient (raised: the
            # batch is written again, after a reconnect when the connection is lost)
            if _is_transient(exc):
                raise
            if len(batch) > 1:
                for single in batch:  # isolate the result the database refuses
                    self._write(conn, [single])
                return
            refused = batch[0]
            if refused.dead_letter == "result_refused":
                raise  # even the dead letter: the database cannot take results; kept, retried
            error = f"the database refused the action's result ({exc.sqlstate}: {_first_line(exc)})"
            log.error(
                "the database refused a result; writing a dead letter instead (the action is not performed again)",
                extra={**refused.message.log_fields(), "error": error},
            )
            substitute = Outcome(
                ok=False, output=None, retryable=False, error={"message": error, "type": "result_refused"}
            )
            self._write(conn, [_Finished(refused.message, substitute, refused.duration_ms, "result_refused")])
            return
        by_msg = {f.message.msg_id: f for f in batch}
        with self.lock:  # written (and archived): nothing left to renew
            for msg_id in by_msg:
                self.state.unwritten.pop(msg_id, None)
            # the executions moved on, perhaps into a delay: the loop checks what falls due
            self.flags.want_due_check = True
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

    # --- notifications -----------------------------------------------------------------

    def _listen(self) -> None:
        """The listener, on a connection of its own: wakes the loop for queued actions, and
        dispatches new events itself.

        Dispatching here, as soon as a capture's or emit's NOTIFY arrives, saves the hand-off
        to the loop on the path from the platform's commit to the first action; the loop is
        then woken to read the actions the dispatch queued, without waiting for their NOTIFY.
        Notifications that arrive while it dispatches are taken together by the next one.
        It also dispatches on connecting (events committed while it was not listening) and
        after `poll_interval` without a notification (the fallback the loop's tick was).
        """
        backoff = 0.5
        while not self.stopping.is_set():
            try:
                with self._connect() as conn:
                    conn.execute(f'listen "{q.WAKEUP_CHANNEL}"')
                    conn.execute(f'listen "{q.INSERT_CHANNEL}"')
                    backoff = 0.5
                    can_dispatch = q.has_function(conn, "dispatch")
                    if can_dispatch:
                        self._dispatch(conn)  # catch up on what we missed
                    self._notify(read=True, tick=True)
                    while not self.stopping.is_set():
                        events = heard = False
                        for notify in conn.notifies(timeout=self.config.poll_interval, stop_after=1):
                            heard = True
                            if notify.channel == q.WAKEUP_CHANNEL:
                                events = True
                            else:
                                self._notify(read=True, tick=False)
                        if heard and not events:
                            continue
                        can_dispatch = can_dispatch or q.has_function(conn, "dispatch")
                        if can_dispatch:
                            self._dispatch(conn)
                        elif events:
                            self._notify(read=True, tick=True)
            except Exception as exc:  # never lose the listener: the loop dispatches meanwhile
                if not isinstance(exc, psycopg.OperationalError):
                    log.warning(
                        "the listener failed; retrying",
                        extra={"error": _first_line(exc), "retry_in_s": backoff},
                    )
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            finally:
                self._listener_dispatched_at = None

    def _tick_dispatches(self, now: float) -> bool:
        """Whether the loop's tick dispatches new events too: unless the listener dispatched
        within the last two poll intervals. A healthy listener dispatches at least once a
        poll interval (on a notification, or after poll_interval without one), so an older
        mark means it is down, failing or stuck, and the ticks take over."""
        at = self._listener_dispatched_at
        return at is None or now - at > 2 * self.config.poll_interval + 1.0

    def _dispatch(self, conn: psycopg.Connection[Any]) -> None:
        """Dispatch new events until none are left; wake the loop to read what they queued.

        While this succeeds the loop's ticks leave new events to it (_tick_dispatches); a
        failure hands them back to the ticks until the next dispatch here succeeds."""
        while not self.stopping.is_set():
            try:
                dispatched = q.dispatch(conn)
            except _ROLLED_BACK as exc:
                log.info("dispatch rolled back; retrying", extra={"error": _first_line(exc)})
                continue
            except psycopg.OperationalError:
                raise  # the listener reconnects (and forgets its mark, see _listen)
            except psycopg.Error as exc:  # the loop's tick dispatches then, and logs there
                self._listener_dispatched_at = None
                log.warning("dispatch failed; the next tick retries", extra={"error": _first_line(exc)})
                self._notify(read=True, tick=True)
                return
            self._listener_dispatched_at = time.monotonic()
            if dispatched > 0:
                with self.lock:
                    self.flags.want_due_check = True
                self._notify(read=True, tick=False)
            if dispatched < q.DISPATCH_BATCH:
                return

    def _connect(self) -> psycopg.Connection[Any]:
        """A connection of the runner's (the loop's, the writer's, the listener's), working
        as the service role."""
        conn = psycopg.connect(
            self.url, autocommit=True, connect_timeout=5, application_name="conveyor-runner"
        )
        try:
            _act_as_service_role(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _notify(self, *, read: bool, tick: bool) -> None:
        with self.lock:
            self.flags.want_read |= read or tick
            self.flags.want_tick |= tick
        self.wake.set()


def _result(finished: _Finished) -> dict[str, Any]:
    outcome = finished.outcome
    result: dict[str, Any] = {
        "msg_id": finished.message.msg_id,
        "step_run_id": finished.message.step_run_id,
        "ok": outcome.ok,
        "output": outcome.output,
    }
    if not outcome.ok:
        result["retryable"] = outcome.retryable
        result["retry_after_s"] = outcome.retry_after_s
        result["error"] = outcome.error
    if finished.dead_letter is not None:
        result["dead_letter"] = finished.dead_letter
    return result


def _is_transient(exc: psycopg.Error) -> bool:
    """Whether the error says nothing about the data written: conveyor.error_is_transient's
    classes, and errors without a SQLSTATE (the connection's own). By SQLSTATE, not by
    psycopg's class: OperationalError covers program limits too (54001, a value too deep)."""
    state = exc.sqlstate
    return state is None or state[:2] in ("08", "40", "53", "57", "58", "XX") or state == "55P03"


def _act_as_service_role(conn: psycopg.Connection[Any]) -> None:
    """Work as conveyor_service when logged in as a member of it.

    Row-level security is bypassed by the BYPASSRLS attribute, which role membership does
    not pass on; a runner that logs in as `create role runner login in role conveyor_service`
    therefore switches to the role itself. Superusers and BYPASSRLS roles stay as they are.
    """
    row = conn.execute(
        "select case when r.rolsuper or r.rolbypassrls then false"
        " when not exists (select from pg_catalog.pg_roles where rolname = 'conveyor_service') then false"
        " else pg_catalog.pg_has_role(current_user, 'conveyor_service', 'member') end"
        " from pg_catalog.pg_roles as r where r.rolname = current_user"
    ).fetchone()
    if row is not None and row[0]:
        conn.execute("set role conveyor_service")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)
