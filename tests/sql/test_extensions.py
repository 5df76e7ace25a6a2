"""After migrate, pg_cron schedules jobs and pgmq queues work, and both are recorded."""

from __future__ import annotations

import psycopg
from psycopg.rows import dict_row

from conveyor.migrate import migrate


def test_pg_cron_can_schedule_a_job_after_migrate(cron_db_url: str) -> None:
    with psycopg.connect(cron_db_url, autocommit=True, row_factory=dict_row) as conn:
        job = conn.execute(
            "select cron.schedule('conveyor-test-job', '*/5 * * * *', 'select 1') as id"
        ).fetchone()
        assert job is not None
        try:
            row = conn.execute(
                "select schedule, command, database from cron.job where jobid = %s", (job["id"],)
            ).fetchone()
            assert row == {"schedule": "*/5 * * * *", "command": "select 1", "database": "conveyor"}
        finally:
            conn.execute("select cron.unschedule(%s)", (job["id"],))


def test_pgmq_creates_sends_reads_and_archives(conn: psycopg.Connection[dict[str, object]]) -> None:
    conn.execute("select pgmq.create('test_q')")
    sent = conn.execute("""select pgmq.send('test_q', '{"hello": "world"}'::jsonb) as id""").fetchone()
    assert sent is not None
    msgs = conn.execute("select msg_id, read_ct, message from pgmq.read('test_q', 30, 10)").fetchall()
    assert msgs == [{"msg_id": sent["id"], "read_ct": 1, "message": {"hello": "world"}}]
    # While the visibility timeout runs, a second reader sees nothing.
    assert conn.execute("select * from pgmq.read('test_q', 30, 10)").fetchall() == []
    archived = conn.execute("select pgmq.archive('test_q', %s::bigint) as ok", (sent["id"],)).fetchone()
    assert archived == {"ok": True}
    assert conn.execute("select count(*) as n from pgmq.q_test_q").fetchone() == {"n": 0}
    assert conn.execute("select msg_id from pgmq.a_test_q").fetchall() == [{"msg_id": sent["id"]}]


def test_installed_components_record_version_and_method(cron_db_url: str) -> None:
    with psycopg.connect(cron_db_url, row_factory=dict_row) as conn:
        rows = {
            r["name"]: r
            for r in conn.execute(
                "select name, version, method from conveyor.installed_components"
            ).fetchall()
        }
    assert rows["pg_cron"]["method"] == "extension" and rows["pg_cron"]["version"]
    assert rows["pgmq"]["method"] in {"extension", "sql-only"}
    assert rows["pgmq"]["version"]


def test_pg_cron_outside_its_database_is_reported_not_fatal(empty_db_url: str) -> None:
    report = migrate(empty_db_url)
    cron = next(e for e in report.extensions if e.name == "pg_cron")
    assert cron.method == "absent"
    assert cron.warning is not None and "conveyor" in cron.warning
    pgmq = next(e for e in report.extensions if e.name == "pgmq")
    assert pgmq.installed_now and pgmq.version
