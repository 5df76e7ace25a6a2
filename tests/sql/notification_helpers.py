"""What the notification delivery tests share: the platform's user table registered as the
notification users, a tenant's email / SMS connections set as its channels, notifying a
user from SQL, and reading back notifications, deliveries and digests."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb

Conn = psycopg.Connection[dict[str, Any]]


def platform_users(conn: Conn, users: list[tuple[str, str, str | None, str | None, str | None]]) -> None:
    """A platform table app.users (tenant, id, email, phone, time zone), registered as the
    entity `user` and as the notification users."""
    conn.execute("create schema if not exists app")
    conn.execute(
        """create table if not exists app.users (
             tenant_id text not null, id text not null, email text, phone text, tz text,
             primary key (tenant_id, id))"""
    )
    conn.execute(
        "insert into conveyor.entities (entity, table_name, id_column, tenant_column)"
        " values ('user', 'app.users', 'id', 'tenant_id') on conflict do nothing"
    )
    conn.execute("select conveyor.register_notification_users('user', 'email', 'phone', 'tz')")
    for tenant, user, email, phone, tz in users:
        conn.execute(
            "insert into app.users (tenant_id, id, email, phone, tz) values (%s, %s, %s, %s, %s)",
            (tenant, user, email, phone, tz),
        )


def channels(conn: Conn, tenant: str, *, email: bool = True, sms: bool = False, port: int = 2525) -> None:
    """Tenant connections mail (smtp, on 127.0.0.1:port) and text (twilio), set as its channels."""
    if email:
        conn.execute(
            "insert into conveyor.connections (tenant_id, name, kind, config) values (%s, 'mail', 'smtp', %s)",
            (
                tenant,
                Jsonb({"host": "127.0.0.1", "port": port, "security": "none", "from": "bell@acme.test"}),
            ),
        )
        conn.execute("select conveyor.set_notification_channel(%s, 'email', 'mail')", (tenant,))
    if sms:
        conn.execute(
            "insert into conveyor.connections (tenant_id, name, kind, config) values (%s, 'text', 'twilio', %s)",
            (tenant, Jsonb({"account_sid": "AC1", "from": "+15550000"})),
        )
        conn.execute("select conveyor.set_notification_channel(%s, 'sms', 'text')", (tenant,))


def notify(conn: Conn, tenant: str, user: str, spec: dict[str, Any]) -> int:
    row = conn.execute(
        "select conveyor.notify_user(%s, %s, %s) as id", (tenant, user, Jsonb(spec))
    ).fetchone()
    assert row is not None
    return int(row["id"])


def prefer(conn: Conn, tenant: str, user: str, category: str, preferences: dict[str, Any] | None) -> Any:
    row = conn.execute(
        "select conveyor.set_notification_preferences(%s, %s, %s, %s) as p",
        (tenant, user, category, None if preferences is None else Jsonb(preferences)),
    ).fetchone()
    assert row is not None
    return row["p"]


def deliveries(conn: Conn, **where: Any) -> list[dict[str, Any]]:
    clause = " and ".join(f"{k} = %({k})s" for k in where) or "true"
    return conn.execute(
        f"select * from conveyor.notification_deliveries where {clause} order by delivery_id", where
    ).fetchall()


def delivery_messages(conn: Conn) -> list[dict[str, Any]]:
    rows = conn.execute(
        "select msg_id, message, vt from pgmq.q_conveyor_actions where message ? 'delivery_id' order by msg_id"
    ).fetchall()
    return list(rows)


def tick(conn: Conn, at: Any) -> dict[str, Any]:
    row = conn.execute("select conveyor.tick(%s) as t", (at,)).fetchone()
    assert row is not None
    return dict(row["t"])
