"""The runner wakes when time-driven work falls due (conveyor.tick() says when), so a delay
resumes on time rather than on the runner's next poll."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from conveyor import queue as q
from conveyor.runner import Runner, RunnerConfig
from conveyor.runner.listener import DispatchOwner
from tests.runner.helpers import local_http, wait_for

Conn = psycopg.Connection[Any]


def publish_delay(conn: Conn, delay: str, slug: str = "pause") -> None:
    conn.execute(
        "insert into conveyor.tenants (tenant_id, name) values ('acme', 'Acme') on conflict do nothing"
    )
    document = {
        "slug": slug,
        "name": slug,
        "trigger": {"event": f"crm.{slug}.created"},
        "steps": [{"id": "pause", "delay": {"for": delay}}, {"id": "after", "set": {"done": True}}],
    }
    conn.execute("select conveyor.publish('acme', %s)", (Jsonb(document),))


def emit(conn: Conn, slug: str = "pause", count: int = 1) -> None:
    conn.execute(
        "select conveyor.emit('acme', %s, '{}'::jsonb) from generate_series(1, %s)",
        (f"crm.{slug}.created", count),
    )


def test_tick_says_when_to_tick_again(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert q.tick(conn) is None  # nothing waits on time: the poll will do

        publish_delay(conn, "1h")
        emit(conn)
        due_in = q.tick(conn)  # dispatches the event; its execution waits an hour
        assert due_in is not None and 3_590 < due_in <= 3_600

        # 1,001 executions overdue: one tick (a batch of 1,000) leaves one, so tick again at once
        emit(conn, count=1_000)
        conn.execute("select conveyor.dispatch(2000)")
        conn.execute("update conveyor.executions set resume_at = now() - interval '1 minute'")
        assert q.tick(conn) == 0.0
        assert q.tick(conn) is None  # all resumed and completed

        # overdue but held by another transaction (another runner's tick): no busy loop
        emit(conn)
        conn.execute("select conveyor.dispatch()")
        conn.execute(
            "update conveyor.executions set resume_at = now() - interval '1 minute' where status = 'waiting'"
        )
        with psycopg.connect(db_url) as other:
            other.execute("select 1 from conveyor.executions where status = 'waiting' for update").fetchall()
            assert q.tick(conn) is None
        assert q.tick(conn) is None
        row = conn.execute("select count(*) from conveyor.executions where status <> 'completed'").fetchone()
        assert row == (0,)


def pause_lateness(conn: Conn, db_url: str, start: Callable[[], object]) -> timedelta:
    """Run a runner that polls only every 60 s, call start() once it is up, and return how
    late the step after the execution's `pause` delay started (its lateness)."""
    env = {
        **os.environ,
        "CONVEYOR_DATABASE_URL": db_url,
        "CONVEYOR_POLL_INTERVAL": "60",
        "CONVEYOR_HEARTBEAT_INTERVAL": "60",
        "CONVEYOR_ALLOW_PRIVATE_NETWORKS": "127.0.0.1/32",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor.cli", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: conn.execute("select 1 from conveyor.runners").fetchone())
        start()
        row = wait_for(
            lambda: conn.execute(
                "select (d.output ->> 'resume_at')::timestamptz as resume_at, a.started_at"
                " from conveyor.executions as e"
                " join conveyor.step_runs as d on d.execution_id = e.execution_id and d.step_id = 'pause'"
                " join conveyor.step_runs as a on a.execution_id = e.execution_id and a.step_id = 'after'"
                " where e.status = 'completed'"
            ).fetchone(),
            timeout=20,
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    return row["started_at"] - row["resume_at"]


def test_runner_resumes_a_delay_on_time_not_on_its_next_poll(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as conn:
        publish_delay(conn, "2s")
        # the NOTIFY wakes the runner: it dispatches; the execution waits 2 s
        late = pause_lateness(conn, db_url, lambda: emit(conn))
    assert timedelta(0) <= late < timedelta(seconds=1), late


def test_a_delay_reached_by_a_write_back_resumes_on_time_not_on_the_next_poll(db_url: str) -> None:
    """The write-back runs the execution into the delay; only the runner's due check (not a
    NOTIFY, not the 60 s poll) can tell the loop when it falls due."""
    with local_http() as server, psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as conn:
        conn.execute("insert into conveyor.tenants (tenant_id, name) values ('acme', 'Acme')")
        document = {
            "slug": "call-then-pause",
            "name": "call then pause",
            "trigger": {"event": "crm.call.created"},
            "steps": [
                {"id": "call", "action": "webhook.send", "with": {"url": server.url("/hook")}},
                {"id": "pause", "delay": {"for": "2s"}},
                {"id": "after", "set": {"done": True}},
            ],
        }
        conn.execute("select conveyor.publish('acme', %s)", (Jsonb(document),))
        late = pause_lateness(
            conn,
            db_url,
            lambda: conn.execute("select conveyor.emit('acme', 'crm.call.created', '{}'::jsonb)"),
        )
    assert len(server.requests_to("/hook")) == 1
    assert timedelta(0) <= late < timedelta(seconds=1), late


def test_ticks_leave_events_to_a_listener_that_dispatches_and_take_over_when_it_does_not(db_url: str) -> None:
    runner = Runner(RunnerConfig(db_url, poll_interval=0.2))
    assert (
        runner.listener.owner(time.monotonic()) is DispatchOwner.TICKS
    )  # no listener yet: the ticks dispatch
    listener = threading.Thread(target=runner.listener.loop, daemon=True)
    listener.start()
    try:
        # the listener dispatches as it connects, then at least once a poll interval
        wait_for(lambda: runner.listener.dispatched_at is not None, timeout=10)
        first = runner.listener.dispatched_at
        wait_for(lambda: runner.listener.dispatched_at != first, timeout=10)
        assert runner.listener.owner(time.monotonic()) is DispatchOwner.LISTENER
        # a listener that stopped dispatching (stuck, say) is taken over after two intervals
        assert runner.listener.owner(time.monotonic() + 2 * 0.2 + 1.5) is DispatchOwner.TICKS
    finally:
        runner.stopping.set()
        listener.join(timeout=10)
    assert runner.listener.dispatched_at is None  # its connection is gone
    assert runner.listener.owner(time.monotonic()) is DispatchOwner.TICKS


def test_the_listener_goes_on_after_a_short_batch_that_carried_a_quiet_tenants_event(db_url: str) -> None:
    # a quiet tenant's event behind another's burst makes the claim a quarter batch
    # (sql/fairness.sql); the listener must not take that for "nothing more waits" and leave
    # the burst to its next poll (30 s here)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "insert into conveyor.tenants (tenant_id, name) values ('acme', 'Acme'), ('quiet', 'Quiet')"
            " on conflict do nothing"
        )
        conn.execute(
            "select conveyor.emit('acme', 'crm.item.created', '{}'::jsonb) from generate_series(1, 600)"
        )
        conn.execute("select conveyor.emit('quiet', 'crm.item.created', '{}'::jsonb)")
        runner = Runner(RunnerConfig(db_url, poll_interval=30.0))
        listener = threading.Thread(target=runner.listener.loop, daemon=True)
        started = time.monotonic()
        listener.start()
        try:
            wait_for(
                lambda: (
                    conn.execute(
                        "select count(*) from conveyor.events where dispatched_at is null"
                    ).fetchone()
                    == (0,)
                ),
                timeout=10,
            )
            assert time.monotonic() - started < 10
        finally:
            runner.stopping.set()
            conn.execute(f'notify "{q.WAKEUP_CHANNEL}"')  # ends its wait for notifications
            listener.join(timeout=10)
