"""The lease keeper: keeps in-flight messages invisible to other runners while this one
performs them, and stops doing so for an action that hangs."""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg

from conveyor import queue as q
from conveyor.runner.shared import Shared

log = logging.getLogger("conveyor.runner")


class LeaseKeeper:
    def __init__(self, shared: Shared, visibility_margin: float) -> None:
        self.shared = shared
        self.margin = visibility_margin

    def renew(self, conn: psycopg.Connection[Any]) -> float:
        """Extend the visibility of in-flight messages about to reappear; returns when to look again.

        A healthy runner keeps its messages invisible while it performs them, however long
        an action takes (an SMTP server may be slow in every phase); a dead runner stops
        renewing, so its messages reappear at most `visibility_margin` after its last renewal.
        An action running longer than three times its timeout is considered hung: its
        lease is no longer renewed and another runner performs it again.
        """
        margin = self.margin
        threshold = max(1.0, margin / 2)
        extend = q.visibility_timeout(0, max(margin, 2.0))
        now = time.monotonic()
        renew: list[int] = []
        hung: list[int] = []
        next_check = now + 3600.0
        state = self.shared.state
        with self.shared.lock:
            for msg_id, lease in state.leases.items():
                if lease.hung:
                    continue
                if lease.until - now > threshold:
                    next_check = min(next_check, lease.until - threshold)
                elif now - lease.started < 3 * lease.timeout_s + margin:
                    renew.append(msg_id)
                else:
                    lease.hung = True
                    hung.append(msg_id)
            for msg_id, lease in state.unwritten.items():  # the action is done: never hung
                if lease.until - now > threshold:
                    next_check = min(next_check, lease.until - threshold)
                else:
                    renew.append(msg_id)
        if renew:
            q.extend_visibility(conn, renew, extend)
            with self.shared.lock:
                for msg_id in renew:
                    renewed = state.leases.get(msg_id) or state.unwritten.get(msg_id)
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
