"""Two tenants with executions for the console's tests (test_console_http.py, test_console_browser.py)."""

from __future__ import annotations

from typing import Any

from tests.sql.interpreter_helpers import (
    AMOUNT,
    Conn,
    flow,
    install,
    make_tenant,
    start,
    step_runs,
    write_back,
)

SECRET = "c" * 48
HOSTILE = "<script>window.pwned=1</script>"


def two_tenants(conn: Conn) -> dict[str, Any]:
    """acme: a workflow whose action step waits (its result written back by the test) and
    one with a hostile name and output; globex: one execution of its own."""
    make_tenant(conn, "acme")
    make_tenant(conn, "globex")
    waiting = start(conn, "acme", flow(conn, "acme"), AMOUNT)
    hostile_flow = install(
        conn, "acme", {"slug": "hostile", "steps": [{"id": "say", "set": {"said": HOSTILE}}]}
    )
    conn.execute("update conveyor.workflows set name = %s where slug = 'hostile'", (HOSTILE,))
    hostile = start(conn, "acme", hostile_flow, {"entity_id": "c2"})
    other = start(
        conn, "globex", install(conn, "globex", {"slug": "theirs", "steps": [{"id": "s", "set": {"x": 1}}]})
    )
    return {"waiting": waiting, "hostile": hostile, "other": other}


def finish_action(conn: Conn, execution_id: int, result: dict[str, Any] | None = None) -> None:
    """The queued action step's result (by default a success), as a runner would write it back."""
    run = next(r for r in step_runs(conn, execution_id) if r["status"] == "queued")
    outcome = result or {"ok": True, "output": {"status": 200}}
    write_back(conn, {"msg_id": run["msg_id"], "step_run_id": run["step_run_id"]} | outcome)


def dead_letter(conn: Conn, execution_id: int) -> int:
    """The queued step's message kept as a dead letter (its step still waits), as in tests/sql/test_dead_letters.py."""
    run = next(r for r in step_runs(conn, execution_id) if r["status"] == "queued")
    conn.execute(
        "select conveyor.keep_dead_letter(%s, 'result_refused', 'refused by the test')", (run["msg_id"],)
    )
    conn.execute("select conveyor.archive_actions(array[%s]::bigint[])", (run["msg_id"],))
    row = conn.execute("select max(dead_letter_id) as d from conveyor.dead_letters").fetchone()
    assert row is not None
    return int(row["d"])
