"""The runner's side of the action queue (pgmq queue `conveyor_actions`).

* `read_batch` takes up to N visible messages and, in the same transaction, gives each
  a visibility timeout of its own `timeout_s` plus a margin: while the runner performs
  the action, no other runner sees the message; if this runner dies, the message
  becomes visible again after that and another runner performs it (same idempotency key).
* each message is checked before it is performed (`Message.verdict`): a body the runner
  cannot use, or one read_actions says must not be performed (delivered too often, its
  step run no longer waiting for it), is written back as a dead letter instead
  (docs/queue.md);
* `write_back` hands results to `conveyor.write_back`, which applies
  them, archives the messages and advances the executions, all in one transaction; what
  it sends is made storable and bounded first (conveyor.results). A notification
  delivery's message names a `delivery_id` instead of a step run: its result goes to
  `conveyor.write_back_deliveries` (`write_back_deliveries`).
* `dispatch` calls `conveyor.dispatch()` (new events), `tick` calls `conveyor.tick()`
  (dispatch + resume due delays + schedules) when it exists.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import psycopg

from conveyor.results import MAX_OUTPUT_BYTES, encode_results

QUEUE = "conveyor_actions"
# conveyor.send_actions notifies here when it queues actions (migrations/0016)
INSERT_CHANNEL = "conveyor_actions"
WAKEUP_CHANNEL = "conveyor_wakeup"
DEFAULT_TIMEOUT_S = 30.0
# The most seconds a message's timeout_s may say (2^31 - 1): conveyor.action_message
# writes no more, whatever conveyor.max_action_timeout allows; read_actions clamps to it.
MAX_TIMEOUT_S = 2_147_483_647
_MAX_BIGINT = 2**63 - 1

Conn = psycopg.Connection[Any]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_id(value: Any) -> bool:
    return _is_int(value) and 0 < value <= _MAX_BIGINT


@dataclass(frozen=True)
class Message:
    msg_id: int
    read_ct: int
    # the message as stored: an object when the engine wrote it, anything when not
    raw: Any
    # read_actions' verdict: 'max_deliveries', 'step_run_gone', or None (perform it)
    dead_letter: str | None = None

    @property
    def body(self) -> dict[str, Any]:
        return self.raw if isinstance(self.raw, dict) else {}

    @property
    def timeout_s(self) -> float:
        value = self.body.get("timeout_s")
        if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= MAX_TIMEOUT_S:
            return float(value)
        return DEFAULT_TIMEOUT_S

    @property
    def step_run_id(self) -> int | None:
        """The step run the message names, when it names one (a valid id), else None."""
        value = self.body.get("step_run_id")
        return value if _is_id(value) else None

    @property
    def delivery_id(self) -> int | None:
        """The notification delivery a delivery's message names (it has no step run), else
        None: its result goes to conveyor.write_back_deliveries, not conveyor.write_back."""
        value = self.body.get("delivery_id")
        return value if _is_id(value) and "step_run_id" not in self.body else None

    def problem(self) -> str | None:
        """What makes the body unusable (a message the engine did not write), or None."""
        if not isinstance(self.raw, dict):
            return f"the message is {_json_type(self.raw)}, not a JSON object"
        body = self.raw
        if "delivery_id" in body and "step_run_id" not in body:
            if not _is_id(body["delivery_id"]):
                return (
                    f"delivery_id {_show(body['delivery_id'])} is not a delivery id (a positive whole number)"
                )
        elif not _is_id(body.get("step_run_id")):
            return (
                f"step_run_id {_show(body.get('step_run_id'))} is not a step run id (a positive whole number)"
            )
        for key in ("action", "tenant_id"):
            if not isinstance(body.get(key), str) or not body[key]:
                return f"{key} {_show(body.get(key))} is not a non-empty string"
        for key in ("connection", "idempotency_key", "step_id"):
            if body.get(key) is not None and not isinstance(body[key], str):
                return f"{key} {_show(body[key])} is not a string"
        for key in ("execution_id", "workflow_id", "attempt"):
            if body.get(key) is not None and not _is_id(body[key]):
                return f"{key} {_show(body[key])} is not a positive whole number"
        timeout = body.get("timeout_s")
        if timeout is not None and (
            not isinstance(timeout, int | float)
            or isinstance(timeout, bool)
            or not 0 <= timeout <= MAX_TIMEOUT_S
        ):
            return f"timeout_s {_show(timeout)} is not a number of seconds from 0 to {MAX_TIMEOUT_S}"
        return None

    def verdict(self) -> tuple[str, str] | None:
        """(reason, error) when the message must be dead-lettered rather than performed."""
        problem = self.problem()
        if problem is not None:
            return "malformed_message", f"malformed action message: {problem}; dead-lettered, not performed"
        if self.dead_letter == "max_deliveries":
            return self.dead_letter, (
                f"the message was delivered {self.read_ct - 1} times without a result, more than"
                " conveyor.max_action_deliveries allows; dead-lettered, not performed again"
            )
        if self.dead_letter == "step_run_gone":
            return self.dead_letter, (
                f"step run {self.step_run_id} no longer waits for this message (it is finished, gone,"
                " or waits for another message); dead-lettered, not performed"
            )
        if self.dead_letter is not None:
            return self.dead_letter, f"dead-lettered by the database ({self.dead_letter}), not performed"
        return None

    def log_fields(self) -> dict[str, Any]:
        body = self.body
        return {
            "msg_id": self.msg_id,
            "tenant": body.get("tenant_id"),
            "execution": body.get("execution_id"),
            "workflow": body.get("workflow_id"),
            "step": body.get("step_id"),
            "step_run": body.get("step_run_id"),
            "notification_delivery": body.get("delivery_id"),
            "action": body.get("action"),
            "attempt": body.get("attempt"),
            "delivery": self.read_ct,
        }


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "not JSON"


def _show(value: Any) -> str:
    """A short rendering of a value for an error message."""
    text = "missing" if value is None else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
    # `*`: a database migrated before 0023 returns no dead_letter column
    rows = conn.execute(
        "select * from conveyor.read_actions(%s::integer, %s::numeric, %s::numeric)",
        (qty, margin_s, DEFAULT_TIMEOUT_S),
    ).fetchall()
    messages = [
        Message(
            msg_id=int(row[0]),
            read_ct=int(row[1]),
            raw=row[2],
            dead_letter=str(row[3]) if len(row) > 3 and row[3] is not None else None,
        )
        for row in rows
    ]
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


def _apply(
    conn: Conn, statement: str, results: list[dict[str, Any]], max_output_bytes: int
) -> list[tuple[int, Any, str]]:
    if not results:
        return []
    rows = conn.execute(statement, (encode_results(results, max_output_bytes),)).fetchall()
    return [(int(r[0]), r[1], str(r[2])) for r in rows]


def write_back(
    conn: Conn, results: list[dict[str, Any]], max_output_bytes: int = MAX_OUTPUT_BYTES
) -> list[tuple[int, Any, str]]:
    """Apply results through conveyor.write_back; returns (msg_id, step_run_id, outcome) rows.
    The results are made storable and bounded first (conveyor.results.encode_results)."""
    return _apply(
        conn,
        "select msg_id, step_run_id, outcome from conveyor.write_back(%s::jsonb)",
        results,
        max_output_bytes,
    )


def write_back_deliveries(
    conn: Conn, results: list[dict[str, Any]], max_output_bytes: int = MAX_OUTPUT_BYTES
) -> list[tuple[int, Any, str]]:
    """Apply notification delivery results through conveyor.write_back_deliveries; returns
    (msg_id, delivery_id, outcome) rows, like write_back."""
    return _apply(
        conn,
        "select msg_id, delivery_id, outcome from conveyor.write_back_deliveries(%s::jsonb)",
        results,
        max_output_bytes,
    )


# Events per conveyor.dispatch() call from the listener (a full batch means more may wait).
# Smaller than dispatch's default of 1,000: a burst's first actions are queued, and the
# runners start on them, after 200 events' work rather than 1,000's (first request of a
# burst of 5,000 at the sink after ~130 ms instead of ~290 ms; CPU per event within 3%).
DISPATCH_BATCH = 200
# what conveyor.claim_events takes when several tenants have events waiting (sql/fairness.sql)
CONTENDED_BATCH = DISPATCH_BATCH // 4


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
    progressed = any(result.get(key) for key in ("dispatched", "fired", "expired", "resumed", "delivered"))
    return 0.0 if progressed else None
