"""The runner's side of the action queue (pgmq queue `conveyor_actions`).

* `read_batch` takes up to N visible messages and, in the same transaction, gives each
  a visibility timeout of its own `timeout_s` plus a margin: while the runner performs
  the action, no other runner sees the message; if this runner dies, the message
  becomes visible again after that and another runner performs it (same idempotency key).
* `write_back` hands results to `conveyor.write_back`, which applies
  them, archives the messages and advances the executions, all in one transaction.
* `dispatch` calls `conveyor.dispatch()` (new events), `tick` calls `conveyor.tick()`
  (dispatch + resume due delays + schedules) when it exists.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

QUEUE = "conveyor_actions"
# conveyor.send_actions notifies here when it queues actions (migrations/0016)
INSERT_CHANNEL = "conveyor_actions"
WAKEUP_CHANNEL = "conveyor_wakeup"
DEFAULT_TIMEOUT_S = 30.0

Conn = psycopg.Connection[Any]


@dataclass(frozen=True)
class Message:
    msg_id: int
    read_ct: int
    body: dict[str, Any]

    @property
    def timeout_s(self) -> float:
        value = self.body.get("timeout_s")
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(value)
        return DEFAULT_TIMEOUT_S

    @property
    def step_run_id(self) -> Any:
        return self.body.get("step_run_id")

    def log_fields(self) -> dict[str, Any]:
        return {
            "msg_id": self.msg_id,
            "tenant": self.body.get("tenant_id"),
            "execution": self.body.get("execution_id"),
            "workflow": self.body.get("workflow_id"),
            "step": self.body.get("step_id"),
            "step_run": self.body.get("step_run_id"),
            "action": self.body.get("action"),
            "attempt": self.body.get("attempt"),
            "delivery": self.read_ct,
        }


def visibility_timeout(timeout_s: float, margin_s: float) -> int:
    return max(1, math.ceil(timeout_s + margin_s))


def read_batch(conn: Conn, qty: int, margin_s: float) -> list[Message]:
    """Read up to `qty` messages; each stays invisible for its timeout_s + margin_s.

    One statement (conveyor.read_actions): each message gets its own visibility timeout,
    the message's `timeout_s` when it is a positive number, else DEFAULT_TIMEOUT_S, plus
    the margin, rounded up: the same rule as `Message.timeout_s` and `visibility_timeout`.
    """
    if qty <= 0:
        return []
    rows = conn.execute(
        "select msg_id, read_ct, message from conveyor.read_actions(%s::integer, %s::numeric, %s::numeric)",
        (qty, margin_s, DEFAULT_TIMEOUT_S),
    ).fetchall()
    messages = []
    for row in rows:
        body = row[2] if isinstance(row[2], dict) else json.loads(row[2]) if row[2] else {}
        messages.append(Message(msg_id=int(row[0]), read_ct=int(row[1]), body=body))
    messages.sort(key=lambda m: m.msg_id)
    return messages


def extend_visibility(conn: Conn, msg_ids: list[int], seconds: int) -> None:
    """Keep in-flight messages invisible for `seconds` more (a lease renewal)."""
    conn.execute("select msg_id from pgmq.set_vt(%s, %s::bigint[], %s)", (QUEUE, msg_ids, seconds)).fetchall()


def has_function(conn: Conn, name: str, *, argument: str | None = None) -> bool:
    """Whether conveyor.<name> exists (with a parameter called `argument`, when given): a
    database migrated by an older version may lack it."""
    row = conn.execute(
        "select exists (select from pg_catalog.pg_proc where proname = %s"
        " and pronamespace = to_regnamespace('conveyor')"
        " and (%s::text is null or %s::text = any(proargnames)))",
        (name, argument, argument),
    ).fetchone()
    return bool(row and row[0])


def write_back(conn: Conn, results: list[dict[str, Any]]) -> list[tuple[int, Any, str]]:
    """Apply results through conveyor.write_back; returns (msg_id, step_run_id, outcome) rows."""
    if not results:
        return []
    rows = conn.execute(
        "select msg_id, step_run_id, outcome from conveyor.write_back(%s)", (Jsonb(results),)
    ).fetchall()
    return [(int(r[0]), r[1], str(r[2])) for r in rows]


# Events per conveyor.dispatch() call from the listener (a full batch means more may wait).
# Smaller than dispatch's default of 1,000: a burst's first actions are queued, and the
# runners start on them, after 200 events' work rather than 1,000's (first request of a
# burst of 5,000 at the sink after ~130 ms instead of ~290 ms; CPU per event within 3%).
DISPATCH_BATCH = 200


def dispatch(conn: Conn) -> int:
    """Run conveyor.dispatch() (captured rows become events, events start executions, their
    first actions are queued) in a transaction of its own; returns the events dispatched."""
    row = conn.execute("select conveyor.dispatch(%s::integer)", (DISPATCH_BATCH,)).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def next_due_in(conn: Conn) -> float | None:
    """Seconds until the next time-driven work falls due (conveyor.next_work_due_at), or
    None when nothing is scheduled: what a tick would report, without ticking."""
    row = conn.execute(
        "select extract(epoch from conveyor.next_work_due_at() - pg_catalog.clock_timestamp())::float8"
    ).fetchone()
    return None if row is None or row[0] is None else max(0.0, float(row[0]))


def tick(conn: Conn, *, dispatch: bool | None = None) -> float | None:
    """Run conveyor.tick() (with p_dispatch => `dispatch` unless None); returns in how many
    seconds to tick again for time-driven work (a delay or timeout falling due, a schedule
    slot, ...), or None to wait for the poll.

    0 when work is due now: it fell due while the tick ran, or the tick left some (more
    than a batch). Work due that the tick could not take (another runner's tick holds it)
    gives None rather than a busy loop. A database whose tick() does not report
    next_due_in_s gives None: the runner polls, as before.
    """
    if dispatch is None:
        row = conn.execute("select conveyor.tick()").fetchone()
    else:
        row = conn.execute("select conveyor.tick(p_dispatch => %s)", (dispatch,)).fetchone()
    result = row[0] if row else None
    if not isinstance(result, dict) or not isinstance(result.get("next_due_in_s"), int | float):
        return None
    due_in = float(result["next_due_in_s"])
    if due_in >= 0:
        return due_in
    progressed = any(result.get(key) for key in ("dispatched", "fired", "expired", "resumed"))
    return 0.0 if progressed else None
