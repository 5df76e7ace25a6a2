"""The action pool: performs actions on daemon threads, at most `concurrency` at once, and
hands each result (or a dead letter for a message it must not perform) to the writer.

Why threads: actions are blocking I/O (sockets, smtplib); a bounded set of daemon threads
keeps every action library usable as is, the GIL is irrelevant for network waits, and a
thread that outlives the shutdown grace period cannot hold the process (its message
simply becomes visible again)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

import psycopg

from conveyor import queue as q
from conveyor.actions import ActionRequest, Environment, Outcome, perform
from conveyor.connections import Connection
from conveyor.errors import ConveyorError
from conveyor.metrics import Metrics
from conveyor.runner.config import RunnerConfig
from conveyor.runner.shared import Finished, Lease, Shared
from conveyor.secrets import SecretBox

log = logging.getLogger("conveyor.runner")


class ActionPool:
    def __init__(
        self,
        shared: Shared,
        config: RunnerConfig,
        env: Environment,
        box: SecretBox | None,
        metrics: Metrics,
    ) -> None:
        self.shared = shared
        self.config = config
        self.env = env
        self.box = box
        self.metrics = metrics
        self._tasks: queue.SimpleQueue[tuple[q.Message, Connection | str | None]] = queue.SimpleQueue()
        self._idle_threads = 0

    def start_batch(self, conn: psycopg.Connection[Any], messages: list[q.Message]) -> None:
        """Start the batch's actions; dead-letter the messages that must not be performed."""
        runnable = []
        for message in messages:
            verdict = message.verdict()
            if verdict is None:
                runnable.append(message)
            else:
                self.dead_letter(message, *verdict)
        if runnable:
            connections = self.load_connections(conn, runnable)
            for message in runnable:
                self.start(message, connections)

    def dead_letter(self, message: q.Message, reason: str, error: str) -> None:
        """Hand the writer a dead letter for a message that is not performed: the database
        fails its step with `error` (when the step still waits for it) and keeps it."""
        log.warning("message dead-lettered", extra={**message.log_fields(), "reason": reason, "error": error})
        outcome = Outcome(ok=False, output=None, retryable=False, error={"message": error, "type": reason})
        now = time.monotonic()
        lease = Lease(now, now + q.visibility_timeout(message.timeout_s, self.config.visibility_margin), 0.0)
        with self.shared.lock:
            self.shared.state.finished.append(Finished(message, outcome, 0, dead_letter=reason))
            self.shared.state.unwritten[message.msg_id] = lease
        self.shared.results.set()

    def load_connections(
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

    def start(self, message: q.Message, connections: dict[tuple[str, str], Connection | str]) -> None:
        body = message.body
        connection: Connection | str | None = None
        if body.get("connection"):
            connection = connections[(str(body.get("tenant_id")), str(body["connection"]))]
        now = time.monotonic()
        lease = Lease(
            now,
            now + q.visibility_timeout(message.timeout_s, self.config.visibility_margin),
            message.timeout_s,
        )
        with self.shared.lock:
            self.shared.state.leases[message.msg_id] = lease
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
            self.perform(message, connection)  # counts this thread idle as it finishes
            message, connection = self._tasks.get()

    def _outcome(self, message: q.Message, connection: Connection | str | None) -> Outcome:
        body = message.body
        if isinstance(connection, str):
            return Outcome(
                ok=False,
                output=None,
                retryable=False,
                error={"message": connection, "type": "connection_unavailable"},
            )
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
            return Outcome(
                ok=False,
                output=None,
                error={"message": "the action's input must be a JSON object", "type": "invalid_input"},
            )
        return perform(request, self.env)

    def perform(self, message: q.Message, connection: Connection | str | None) -> None:
        started = time.monotonic()
        body = message.body
        try:
            outcome = self._outcome(message, connection)
        except Exception as exc:  # never lose a slot
            log.exception("performing an action failed unexpectedly", extra=message.log_fields())
            outcome = Outcome(
                ok=False, output=None, retryable=True, error={"message": repr(exc), "type": "internal"}
            )
        finished = Finished(message, outcome, int((time.monotonic() - started) * 1000))
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
        shared = self.shared
        with shared.lock:
            shared.state.finished.append(finished)
            lease = shared.state.leases.pop(message.msg_id, None)
            if lease is not None and not lease.hung:
                shared.state.unwritten[message.msg_id] = lease
            self._idle_threads += 1
            # The loop reads again once half a batch of slots is free (see Loop.read_and_start):
            # waking it for every finished action would only cost it a turn.
            wake = self.config.concurrency - shared.state.inflight >= self.config.low_water
        shared.results.set()
        if wake or shared.stopping.is_set():
            shared.wake.set()
