"""The listener, on a connection of its own: wakes the loop for queued actions, and
dispatches new events itself.

NOTIFY `conveyor_wakeup` (new events) makes it run `conveyor.dispatch()` there and then,
and wake the loop to read the actions that started; NOTIFY `conveyor_actions` only wakes
the loop. Dispatching here, as soon as a capture's or emit's NOTIFY arrives, saves the
hand-off to the loop on the path from the platform's commit to the first action.
Notifications that arrive while it dispatches are taken together by the next one. It also
dispatches on connecting (events committed while it was not listening) and after
`poll_interval` without a notification (the fallback the loop's tick was).

Who dispatches is a mode (`Listener.owner`): while the listener has dispatched within two
poll intervals without failing it owns dispatch and the loop's ticks leave new events to
it, so the loop never spends a burst's dispatch time not reading actions; otherwise
(down, failing or stuck) the ticks own it."""

from __future__ import annotations

import enum
import logging
import time
from typing import Any

import psycopg

from conveyor import queue as q
from conveyor.runner.shared import ROLLED_BACK, Shared, connect, first_line

log = logging.getLogger("conveyor.runner")


class DispatchOwner(enum.Enum):
    LISTENER = "listener"
    TICKS = "ticks"


class Listener:
    def __init__(self, shared: Shared, url: str, poll_interval: float) -> None:
        self.shared = shared
        self.url = url
        self.poll_interval = poll_interval
        # when it last dispatched without failing (None: not since it failed or lost its
        # connection)
        self.dispatched_at: float | None = None

    def owner(self, now: float) -> DispatchOwner:
        """Who dispatches new events at `now`. A healthy listener dispatches at least once a
        poll interval (on a notification, or after poll_interval without one), so an older
        mark means it is down, failing or stuck, and the ticks take over."""
        at = self.dispatched_at
        if at is None or now - at > 2 * self.poll_interval + 1.0:
            return DispatchOwner.TICKS
        return DispatchOwner.LISTENER

    def loop(self) -> None:
        """The listener thread's body: listen, dispatch, reconnect with backoff."""
        backoff = 0.5
        stopping = self.shared.stopping
        while not stopping.is_set():
            try:
                with connect(self.url) as conn:
                    conn.execute(f'listen "{q.WAKEUP_CHANNEL}"')
                    conn.execute(f'listen "{q.INSERT_CHANNEL}"')
                    backoff = 0.5
                    can_dispatch = q.has_function(conn, "dispatch")
                    if can_dispatch:
                        self.dispatch(conn)  # catch up on what we missed
                    self.shared.notify(read=True, tick=True)
                    while not stopping.is_set():
                        events = heard = False
                        for notify in conn.notifies(timeout=self.poll_interval, stop_after=1):
                            heard = True
                            if notify.channel == q.WAKEUP_CHANNEL:
                                events = True
                            else:
                                self.shared.notify(read=True, tick=False)
                        if heard and not events:
                            continue
                        can_dispatch = can_dispatch or q.has_function(conn, "dispatch")
                        if can_dispatch:
                            self.dispatch(conn)
                        elif events:
                            self.shared.notify(read=True, tick=True)
            except Exception as exc:  # never lose the listener: the loop dispatches meanwhile
                if not isinstance(exc, psycopg.OperationalError):
                    log.warning(
                        "the listener failed; retrying",
                        extra={"error": first_line(exc), "retry_in_s": backoff},
                    )
                stopping.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            finally:
                self.dispatched_at = None

    def dispatch(self, conn: psycopg.Connection[Any]) -> None:
        """Dispatch new events until none are left; wake the loop to read what they queued.

        A failure hands dispatch back to the ticks until the next dispatch here succeeds."""
        while not self.shared.stopping.is_set():
            try:
                dispatched = q.dispatch(conn)
            except ROLLED_BACK as exc:
                log.info("dispatch rolled back; retrying", extra={"error": first_line(exc)})
                continue
            except psycopg.OperationalError:
                raise  # the listener reconnects (and forgets its mark, see loop)
            except psycopg.Error as exc:  # the loop's tick dispatches then, and logs there
                self.dispatched_at = None
                log.warning("dispatch failed; the next tick retries", extra={"error": first_line(exc)})
                self.shared.notify(read=True, tick=True)
                return
            self.dispatched_at = time.monotonic()
            if dispatched > 0:
                self.shared.want_due_check()
                self.shared.notify(read=True, tick=False)
            # a full batch, or a full contended one (several tenants waiting): more may wait
            if dispatched < q.CONTENDED_BATCH:
                return
