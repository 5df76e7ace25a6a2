"""With no runner alive, pg_cron's minute job still dispatches events and runs workflows."""

from __future__ import annotations

import time

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb


@pytest.mark.slow
def test_pg_cron_dispatches_without_any_runner(cron_db_url: str) -> None:
    document = {
        "slug": "safety-net",
        "name": "Safety net",
        "trigger": {"event": "ops.probe.sent"},
        "steps": [{"id": "note", "set": {"seen": "{{trigger.payload.n}}"}}],
    }
    with psycopg.connect(cron_db_url, autocommit=True, row_factory=dict_row) as conn:
        conn.execute(
            "insert into conveyor.tenants (tenant_id, name) values ('cron-net', 'Cron') on conflict do nothing"
        )
        conn.execute("select conveyor.publish('cron-net', %s)", (Jsonb(document),))
        event = conn.execute(
            "select conveyor.emit('cron-net', 'ops.probe.sent', '{\"n\": 7}') as id"
        ).fetchone()
        assert event is not None
        # pg_cron runs every minute on the minute: at most ~60 s, plus its start-up.
        deadline = time.monotonic() + 90
        row = None
        while time.monotonic() < deadline:
            row = conn.execute(
                "select status, vars from conveyor.executions where event_id = %s", (event["id"],)
            ).fetchone()
            if row is not None:
                break
            time.sleep(1)
        assert row == {"status": "completed", "vars": {"seen": 7}}, "pg_cron's conveyor-tick did not dispatch"
        runs = conn.execute(
            "select d.status from cron.job_run_details as d join cron.job as j using (jobid)"
            " where j.jobname = 'conveyor-tick' order by d.runid desc limit 1"
        ).fetchone()
        assert runs == {"status": "succeeded"}
