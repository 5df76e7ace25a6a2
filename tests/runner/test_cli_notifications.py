"""`conveyor notifications ...` against a real database (the `cli` fixture: tenants acme, the
default, and globex)."""

from __future__ import annotations

import json
from typing import Any

import psycopg

Conn = psycopg.Connection[dict[str, Any]]


def sent(cli: Any, user: str, title: str, *extra: str) -> int:
    result = cli("notifications", "send", "--user", user, "--title", title, *extra, "--json")
    assert result.exit_code == 0, result.output
    return int(json.loads(result.output)["id"])


def listed(cli: Any, user: str, *extra: str) -> dict[str, Any]:
    result = cli("notifications", "list", "--user", user, "--json", *extra)
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.output)
    return data


def test_send_list_mark_and_read_all(cli: Any, conn: Conn) -> None:
    first = sent(cli, "u-1", "Hello", "--message", "there", "--type", "warning", "--priority", "high")
    second = sent(cli, "u-1", "Again")
    sent(cli, "u-2", "Not u-1's")
    row = conn.execute("select * from conveyor.notifications where notification_id = %s", (first,)).fetchone()
    assert row is not None and (
        row["tenant_id"],
        row["user_id"],
        row["message"],
        row["type"],
        row["priority"],
    ) == (
        "acme",
        "u-1",
        "there",
        "warning",
        "high",
    )
    data = listed(cli, "u-1")
    assert [n["id"] for n in data["notifications"]] == [second, first] and data["unread_count"] == 2

    table = cli("notifications", "list", "--user", "u-1")
    assert table.exit_code == 0 and "Hello" in table.output and "2 unread" in table.output

    assert (
        cli("notifications", "read", str(first), "--user", "u-1").output.strip()
        == f"notification {first}: read"
    )
    assert [n["id"] for n in listed(cli, "u-1", "--unread")["notifications"]] == [second]
    assert cli("notifications", "unread", str(first), "--user", "u-1").exit_code == 0
    assert cli("notifications", "archive", str(second), "--user", "u-1").exit_code == 0
    assert [n["id"] for n in listed(cli, "u-1")["notifications"]] == [first]
    marked = cli("notifications", "read-all", "--user", "u-1", "--json")
    assert json.loads(marked.output) == {"marked": 1}
    assert listed(cli, "u-2")["unread_count"] == 1  # another user's are untouched


def test_another_users_or_tenants_notification_is_refused_as_missing(cli: Any, conn: Conn) -> None:
    theirs = sent(cli, "u-2", "u-2's")
    refused = cli("notifications", "read", str(theirs), "--user", "u-1")
    assert refused.exit_code == 1
    assert f"notification {theirs} is not a notification of user 'u-1' in tenant 'acme'" in refused.output
    other_tenant = cli("notifications", "read", str(theirs), "--user", "u-2", "--tenant", "globex")
    assert (
        other_tenant.exit_code == 1
        and "is not a notification of user 'u-2' in tenant 'globex'" in other_tenant.output
    )
    row = conn.execute(
        "select read_at from conveyor.notifications where notification_id = %s", (theirs,)
    ).fetchone()
    assert row == {"read_at": None}


def test_bad_input_names_what_is_wrong(cli: Any) -> None:
    empty = cli("notifications", "send", "--user", "u-1", "--title", " ")
    assert empty.exit_code == 1 and "title" in empty.output
    assert cli("notifications", "list", "--user", "u-1", "--limit", "501").exit_code == 2
    assert cli("notifications", "send", "--user", "u-1", "--title", "x", "--type", "loud").exit_code == 2
    assert cli("notifications", "list").exit_code == 2  # --user is required
