"""The workload the chaos runs put under fault: workflows, events, and a reconnecting
database handle for the driver itself (the database may be restarted under it)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from bench.chaos.sinks import REJECT_PREFIX, HttpSink, SmtpSink
from conveyor import connections

TENANT = "chaos"
ORDER_EVENT = "chaos.order.placed"
REFUND_EVENT = "chaos.refund.requested"
# Every this-many'th order is refused by the receiver (422) in the outage scenario.
REJECT_EVERY = 10

T = TypeVar("T")
Row = dict[str, Any]


class Db:
    """The driver's own connection: reconnects (for up to `patience` seconds) when the
    server goes away, so the driver survives the restarts it causes."""

    def __init__(self, url: str, patience: float = 120.0) -> None:
        self.url = url
        self.patience = patience
        self._conn: psycopg.Connection[Row] | None = None

    def _with_retry(self, work: Callable[[psycopg.Connection[Row]], T]) -> T:
        deadline = time.monotonic() + self.patience
        while True:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(
                        self.url, autocommit=True, row_factory=dict_row, connect_timeout=5
                    )
                return work(self._conn)
            except psycopg.OperationalError:
                self.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def rows(self, query: str, params: Any = None) -> list[Row]:
        """The statement's rows (none for a statement that returns none)."""

        def run(conn: psycopg.Connection[Row]) -> list[Row]:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description is not None else []

        return self._with_retry(run)

    def one(self, query: str, params: Any = None) -> Row:
        rows = self.rows(query, params)
        assert len(rows) == 1, rows
        return rows[0]

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None


def _webhook(
    step_id: str, url: str, body: dict[str, Any], retry: dict[str, Any], timeout: str, **routing: Any
) -> dict[str, Any]:
    return {
        "id": step_id,
        "action": "webhook.send",
        "with": {"url": url, "body": body},
        "retry": retry,
        "timeout": timeout,
        **routing,
    }


def publish_orders(db: Db, sink: HttpSink, *, timeout: str = "5s") -> None:
    """Three webhooks in a row; each step's body names the delivery the previous step's
    response reported, so the checks can follow the chain through the recorded outputs."""
    db.rows("select conveyor.create_tenant(%s, 'Chaos')", (TENANT,))
    retry = {"attempts": 5, "backoff": "fixed", "initial": "1s", "jitter": False}
    order = "{{trigger.payload.order}}"
    document = {
        "slug": "order",
        "name": "Order fulfilment",
        "trigger": {"event": ORDER_EVENT},
        "steps": [
            _webhook("reserve", sink.url("/reserve"), {"order": order}, retry, timeout),
            _webhook(
                "charge",
                sink.url("/charge"),
                {"order": order, "reservation": "{{steps.reserve.output.body.delivery}}"},
                retry,
                timeout,
            ),
            _webhook(
                "ship",
                sink.url("/ship"),
                {"order": order, "charge": "{{steps.charge.output.body.delivery}}"},
                retry,
                timeout,
            ),
        ],
    }
    db.rows("select conveyor.publish(%s, %s)", (TENANT, Jsonb(document)))


# The outage scenario's retry policy: exponential without jitter, so the delays the
# engine chose can be checked exactly; enough attempts to outlast the outage many times.
OUTAGE_RETRY = {"attempts": 30, "backoff": "exponential", "initial": "1s", "max": "4s", "jitter": False}


def expected_retry_delay(attempt: int) -> int:
    """Seconds before attempt + 1 under OUTAGE_RETRY (computed here, not by the engine)."""
    return int(min(1 * 2 ** (attempt - 1), 4))


def publish_outage_workflows(db: Db, sink: HttpSink, smtp: SmtpSink) -> None:
    """`fulfil`: webhook → email → webhook; a refused order (422) goes to an alert step
    instead. `refund`: one webhook the receiver always refuses, with on_error fail."""
    db.rows("select conveyor.create_tenant(%s, 'Chaos')", (TENANT,))
    with psycopg.connect(db.url, autocommit=True) as conn:
        connections.add(
            conn, None, tenant_id=TENANT, name="mail", kind="smtp",
            config={"host": "127.0.0.1", "port": smtp.port, "security": "none", "from": "shop@chaos.test"},
            secret={},
        )  # fmt: skip
    order = "{{trigger.payload.order}}"
    base = sink.url("")
    fulfil = {
        "slug": "fulfil",
        "name": "Fulfil an order",
        "trigger": {"event": ORDER_EVENT},
        "steps": [
            _webhook(
                "hook",
                base + "/{{trigger.payload.route}}",
                {"order": order},
                OUTAGE_RETRY,
                "10s",
                on_error={"goto": "alert"},
            ),
            {
                "id": "mail",
                "action": "email.send",
                "connection": "mail",
                "with": {"to": f"order-{order}@example.com", "subject": f"Order {order}", "text": "Shipped."},
                "retry": OUTAGE_RETRY,
                "timeout": "10s",
            },
            _webhook(
                "confirm",
                sink.url("/confirm"),
                {"order": order, "mail": "{{steps.mail.output.message_id}}"},
                OUTAGE_RETRY,
                "10s",
                next=None,
            ),
            _webhook(
                "alert",
                sink.url("/alert"),
                {"order": order, "error": "{{steps.hook.error.message}}"},
                OUTAGE_RETRY,
                "10s",
            ),
        ],
    }
    refund = {
        "slug": "refund",
        "name": "Refund",
        "trigger": {"event": REFUND_EVENT},
        "steps": [
            _webhook(
                "refund",
                sink.url(REJECT_PREFIX + "-refund"),
                {"refund": "{{trigger.payload.refund}}"},
                OUTAGE_RETRY,
                "10s",
                on_error="fail",
            )
        ],
    }
    for document in (fulfil, refund):
        db.rows("select conveyor.publish(%s, %s)", (TENANT, Jsonb(document)))


def emit_orders(url: str, first: int, last: int, *, routes: bool = False, patience: float = 120.0) -> None:
    """Emit orders first..last in one transaction. Each event has a dedupe key, so a
    batch whose commit was lost with the connection is simply emitted again."""
    route = (
        f"case when i %% {REJECT_EVERY} = 0 then '{REJECT_PREFIX[1:]}-orders' else 'orders' end"
        if routes
        else "null"
    )
    Db(url, patience)._with_retry(
        lambda conn: conn.execute(
            "select count(conveyor.emit(%s, %s, jsonb_strip_nulls(jsonb_build_object('order', i, 'route', "
            + route
            + ")), null, null, 'order-' || i)) from generate_series(%s::integer, %s::integer) as i",
            (TENANT, ORDER_EVENT, first, last),
        ).fetchall()
    )


def emit_refunds(url: str, count: int) -> None:
    Db(url)._with_retry(
        lambda conn: conn.execute(
            "select count(conveyor.emit(%s, %s, jsonb_build_object('refund', i), null, null, 'refund-' || i))"
            " from generate_series(1, %s::integer) as i",
            (TENANT, REFUND_EVENT, count),
        ).fetchall()
    )


def progress(db: Db) -> Row:
    """Events not yet dispatched, executions by state, and messages left in the queue."""
    return db.one(
        "select (select count(*) from conveyor.events where dispatched_at is null) as undispatched,"
        " count(*) as executions,"
        " count(*) filter (where status in ('pending', 'running', 'waiting')) as open,"
        " (select count(*) from pgmq.q_conveyor_actions) as queued"
        " from conveyor.executions"
    )
