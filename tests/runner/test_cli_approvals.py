"""`conveyor approvals list | approve | reject | delegate` against a real database (the `cli`
fixture of conftest.py: tenants acme, the default, and globex)."""

from __future__ import annotations

import json
from typing import Any

import psycopg

from tests.sql.approval_helpers import ask, request_of, result

Conn = psycopg.Connection[dict[str, Any]]


def test_list_approve_and_the_execution_continues(cli: Any, conn: Conn) -> None:
    execution_id = ask(conn, "acme", {"approvers": ["ann", "bob"], "due": "1d", "quorum": "any"})
    request_id = request_of(conn, execution_id)["request_id"]

    shown = cli("approvals", "list", "--user", "ann", "--json")
    assert shown.exit_code == 0, shown.output
    [item] = json.loads(shown.output)
    assert (item["request_id"], item["workflow"], item["asked"], item["approvers"]) == (
        request_id,
        "expense",
        True,
        ["ann", "bob"],
    )
    table = cli("approvals", "list", "--user", "ann")
    assert table.exit_code == 0 and "expense" in table.output, table.output

    done = cli("approvals", "approve", str(request_id), "--user", "bob", "--note", "go ahead")
    assert done.exit_code == 0, done.output
    assert done.output.strip() == (
        f"approval request {request_id}: bob approved; request approved, the execution continues"
    )
    assert result(conn, execution_id) == ("completed", "approved")
    note = conn.execute("select note from conveyor.approval_decisions").fetchone()
    assert note == {"note": "go ahead"}
    assert json.loads(cli("approvals", "list", "--user", "ann", "--json").output) == []
    every = json.loads(cli("approvals", "list", "--user", "bob", "--all", "--json").output)
    assert [(a["request_id"], a["outcome"]) for a in every] == [(request_id, "approved")]


def test_delegate_then_reject(cli: Any, conn: Conn) -> None:
    execution_id = ask(conn, "acme", {"approvers": ["ann", "bob"], "due": "1d"})
    request_id = request_of(conn, execution_id)["request_id"]
    handed = cli(
        "approvals", "delegate", str(request_id), "--user", "ann", "--to", "eve", "--reason", "leave"
    )
    assert handed.exit_code == 0, handed.output
    assert handed.output.strip() == f"approval request {request_id}: ann delegated to eve"
    pending = cli("approvals", "approve", str(request_id), "--user", "eve", "--json")
    assert pending.exit_code == 0, pending.output
    assert json.loads(pending.output)["state"] == "pending"
    rejected = cli("approvals", "reject", str(request_id), "--user", "bob", "--note", "no")
    assert rejected.exit_code == 0, rejected.output
    assert "bob rejected; request rejected" in rejected.output
    assert result(conn, execution_id) == ("completed", "rejected")


def test_refusals_name_what_is_wrong(cli: Any, conn: Conn) -> None:
    execution_id = ask(conn, "acme", {"approvers": ["ann"], "due": "1d"})
    request_id = request_of(conn, execution_id)["request_id"]
    stranger = cli("approvals", "approve", str(request_id), "--user", "mallory")
    assert stranger.exit_code == 1
    assert f"error: user 'mallory' is not an approver of approval request {request_id}" in stranger.output
    elsewhere = cli("approvals", "reject", str(request_id), "--user", "ann", "--tenant", "globex")
    assert elsewhere.exit_code == 1
    assert f"approval request {request_id} does not exist for tenant 'globex'" in elsewhere.output
    assert cli("approvals", "delegate", str(request_id), "--user", "ann").exit_code == 2  # --to is required
    assert result(conn, execution_id) == ("waiting", None)
