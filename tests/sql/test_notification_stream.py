"""sql/notification_stream.sql: what the notification stream reads, and its bounds."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

Conn = psycopg.Connection[dict[str, Any]]


def notify(conn: Conn, tenant: str, user: str, title: str, **fields: Any) -> int:
    row = conn.execute(
        "select conveyor.notify_user(%s, %s, %s) as id", (tenant, user, Jsonb({"title": title, **fields}))
    ).fetchone()
    assert row is not None
    return int(row["id"])


def after(
    conn: Conn, after_id: int, also: list[int] | None = None, limit: int = 500, user: str = "u1"
) -> list[int]:
    rows = conn.execute(
        "select id from conveyor.notifications_after('acme', %s, %s, %s::bigint[], %s)",
        (user, after_id, also, limit),
    ).fetchall()
    return [int(r["id"]) for r in rows]


def test_rows_after_an_id_or_named_oldest_first_one_users_only(conn: Conn, tenant: str) -> None:
    conn.execute("select conveyor.create_tenant('globex', 'Globex')")
    a, b, c = (notify(conn, "acme", "u1", f"n{i}") for i in range(3))
    notify(conn, "acme", "u2", "not u1's")
    other = notify(conn, "globex", "u1", "other tenant's")
    archived = notify(conn, "acme", "u1", "archived")
    conn.execute("select * from conveyor.mark_notification('acme', 'u1', %s, 'archived')", (archived,))
    expired = notify(conn, "acme", "u1", "expired", expires_in="1s")
    conn.execute(
        "update conveyor.notifications set expires_at = now() - interval '1 s' where notification_id = %s",
        (expired,),
    )
    assert after(conn, 0) == [a, b, c]
    assert after(conn, b) == [c]
    assert after(conn, c, [a, other]) == [a]  # a named row of u1's, never another tenant's
    assert after(conn, 0, limit=2) == [a, b]
    row = conn.execute("select unread_count from conveyor.notifications_after('acme', 'u1', 0)").fetchone()
    assert row == {"unread_count": 3}
    start = conn.execute("select * from conveyor.notification_stream_start('acme', 'u1')").fetchone()
    assert start == {"last_id": expired, "unread_count": 3}
    assert conn.execute("select * from conveyor.notification_stream_start('acme', 'nobody')").fetchone() == {
        "last_id": 0,
        "unread_count": 0,
    }


@pytest.mark.parametrize(
    ("after_id", "also", "limit", "error"),
    [
        (-1, None, 500, "p_after_id: -1 is not a notification id"),
        (0, None, 501, "p_limit: 501 is not a number of notifications (1 to 500)"),
        (0, None, 0, "p_limit: 0 is not a number"),
        (0, list(range(501)), 500, "p_also_ids: 501 ids, at most 500"),
    ],
)
def test_arguments_are_bounded(
    conn: Conn, tenant: str, after_id: int, also: list[int] | None, limit: int, error: str
) -> None:
    with pytest.raises(psycopg.Error, match=error.replace("(", r"\(").replace(")", r"\)")):
        after(conn, after_id, also, limit)


def test_a_user_is_required(conn: Conn, tenant: str) -> None:
    with pytest.raises(psycopg.Error, match="a user id is required"):
        conn.execute("select * from conveyor.notifications_after('acme', '', 0)")
    with pytest.raises(psycopg.Error, match="a user id is required"):
        conn.execute("select * from conveyor.notification_stream_start('acme', ' ')")
