"""What the runner's threads share: the in-flight state under one lock, the events that
wake the loop and the writer, and the reasons the loop was woken (`Wants`)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import psycopg

from conveyor import queue as q
from conveyor.actions import Outcome

# A statement the server rolled back because it lost a race with another transaction
# (class 40: deadlock, serialization failure). The connection is fine: do it again.
ROLLED_BACK = (psycopg.errors.TransactionRollback, psycopg.errors.DeadlockDetected)


@dataclass
class Finished:
    message: q.Message
    outcome: Outcome
    duration_ms: int
    # the reason the message is dead-lettered instead of performed (docs/queue.md), or None
    dead_letter: str | None = None


@dataclass
class Lease:
    """An in-flight message: when it started and until when it is invisible to others."""

    started: float
    until: float
    timeout_s: float
    hung: bool = False


@dataclass
class InFlight:
    leases: dict[int, Lease] = field(default_factory=dict)
    # Leases of finished actions whose results are not written yet: still renewed, so a
    # slow write-back never lets another runner perform the action again.
    unwritten: dict[int, Lease] = field(default_factory=dict)
    finished: list[Finished] = field(default_factory=list)
    writing: int = 0  # results taken by the writer and not yet written (or put back)

    @property
    def inflight(self) -> int:
        return len(self.leases)

    @property
    def drained(self) -> bool:
        return self.inflight == 0 and not self.finished and self.writing == 0


@dataclass
class Wants:
    """Why the loop was woken, set by the other threads under the shared lock."""

    read: bool = True  # actions were queued (a NOTIFY, the listener's dispatch)
    tick: bool = True  # new events or a rolled-back tick: tick at once
    # Work was dispatched or written back elsewhere (the listener, the writer): it may have
    # created a delay or timeout falling due before the one the last tick reported.
    due_check: bool = False


class Shared:
    """The state and events every part of the runner works with."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.state = InFlight()
        self.wants = Wants()
        self.stopping = threading.Event()
        self.wake = threading.Event()  # wakes the loop
        self.results = threading.Event()  # wakes the writer: results are waiting

    def notify(self, *, read: bool, tick: bool) -> None:
        """Wake the loop to read actions and/or tick."""
        with self.lock:
            self.wants.read |= read or tick
            self.wants.tick |= tick
        self.wake.set()

    def want_due_check(self) -> None:
        with self.lock:
            self.wants.due_check = True


def connect(url: str) -> psycopg.Connection[Any]:
    """A connection of the runner's (the loop's, the writer's, the listener's), working as
    the service role."""
    conn = psycopg.connect(url, autocommit=True, connect_timeout=5, application_name="conveyor-runner")
    try:
        act_as_service_role(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def act_as_service_role(conn: psycopg.Connection[Any]) -> None:
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


def is_transient(exc: psycopg.Error) -> bool:
    """Whether the error says nothing about the data written: conveyor.error_is_transient's
    classes, and errors without a SQLSTATE (the connection's own). By SQLSTATE, not by
    psycopg's class: OperationalError covers program limits too (54001, a value too deep)."""
    state = exc.sqlstate
    return state is None or state[:2] in ("08", "40", "53", "57", "58", "XX") or state == "55P03"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)
