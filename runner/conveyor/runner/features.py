"""What the database's engine offers the runner, found out once per poll until present.

A database migrated by an older version may lack functions a newer runner calls; until
they exist the runner does without them (only heartbeats, or dispatches in every tick).
Once a function exists it stays, so each is looked up only while missing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from conveyor import queue as q


@dataclass
class EngineFeatures:
    write_back: bool = False  # conveyor.write_back and conveyor.read_actions: actions are read
    tick: bool = False  # conveyor.tick: delays, timeouts and schedules are resumed
    tick_skips_dispatch: bool = False  # tick(p_dispatch): the listener may own dispatch
    due_check: bool = False  # conveyor.next_work_due_at: when time-driven work falls due

    def refresh(self, conn: psycopg.Connection[Any]) -> None:
        self.write_back = self.write_back or (
            q.has_function(conn, "write_back") and q.has_function(conn, "read_actions")
        )
        self.tick = self.tick or q.has_function(conn, "tick")
        self.tick_skips_dispatch = self.tick_skips_dispatch or q.has_function(
            conn, "tick", argument="p_dispatch"
        )
        self.due_check = self.due_check or q.has_function(conn, "next_work_due_at")
