"""`conveyor run`: the runner process.

Today the runner connects, checks that the database is migrated, announces itself with
a heartbeat (visible in `conveyor.runners`) and keeps it fresh until it is stopped.
Performing actions from the pgmq queue arrives with the runner issue; until then the
runner performs no actions.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import uuid
from types import FrameType

import psycopg

from conveyor import __version__
from conveyor.errors import ConveyorError
from conveyor.migrate import schema_version

log = logging.getLogger("conveyor.runner")


class Runner:
    def __init__(self, url: str, *, heartbeat_interval: float = 10.0) -> None:
        self.url = url
        self.heartbeat_interval = heartbeat_interval
        self.runner_id = uuid.uuid4()
        self.stopping = threading.Event()

    def request_stop(self, signum: int, _frame: FrameType | None = None) -> None:
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        self.stopping.set()

    def run(self) -> None:
        """Heartbeat until stopped; reconnect with backoff when the database goes away."""
        backoff = 0.5
        announced = False
        while not self.stopping.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
                    version = schema_version(conn)
                    if version is None:
                        raise ConveyorError("the database is not migrated: run `conveyor migrate` first")
                    if not announced:
                        log.info(
                            "runner ready; it performs no actions yet (see README)",
                            extra={"runner": str(self.runner_id), "schema": version},
                        )
                        announced = True
                    else:
                        log.info("reconnected", extra={"runner": str(self.runner_id)})
                    backoff = 0.5
                    while not self.stopping.is_set():
                        conn.execute(
                            "select conveyor.runner_heartbeat(%s, %s, %s, %s)",
                            (self.runner_id, socket.gethostname(), os.getpid(), __version__),
                        )
                        self.stopping.wait(self.heartbeat_interval)
                    conn.execute("select conveyor.runner_stopped(%s)", (self.runner_id,))
            except psycopg.OperationalError as exc:
                if self.stopping.is_set():
                    break
                log.warning(
                    "database unavailable; retrying",
                    extra={
                        "error": str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc),
                        "retry_in_s": backoff,
                    },
                )
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 10.0)
        log.info("runner stopped", extra={"runner": str(self.runner_id)})
