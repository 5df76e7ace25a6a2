"""`conveyor notifications ...`: a user's in-app notifications from a shell (docs/notifications.md).

Each forwards to the SQL function the platform calls (sql/notifications.sql), for the tenant
from --tenant / CONVEYOR_TENANT and the user from --user; another user's notification is
refused as one that does not exist.
"""

from __future__ import annotations

from typing import Any

import click
from psycopg.types.json import Jsonb

from conveyor import output
from conveyor.commands.common import database_option, fail_cleanly, json_option, tenant_option
from conveyor.db import connect

TYPES = ("info", "success", "warning", "error", "action_required")
PRIORITIES = ("low", "normal", "high", "critical")
COLUMNS = ["id", "type", "priority", "title", "created_at", "read_at"]


def user_option(func: Any) -> Any:
    return click.option("--user", "-u", required=True, help="The platform's user id (whose notifications).")(
        func
    )


@click.group()
def notifications() -> None:
    """List, mark and send a user's in-app notifications."""


@notifications.command("list")
@user_option
@click.option("--unread", is_flag=True, help="Only unread ones.")
@click.option(
    "--limit", default=50, show_default=True, type=click.IntRange(1, 500), help="At most this many."
)
@tenant_option
@database_option
@json_option
@fail_cleanly
def list_notifications(
    user: str, unread: bool, limit: int, tenant: str, database_url: str | None, as_json: bool
) -> None:
    """The user's notifications, newest first (not archived, not expired), and the unread count."""
    with connect(database_url) as conn:
        rows = conn.execute(
            "select * from conveyor.list_notifications(%s, %s, %s, %s)", (tenant, user, unread, limit)
        ).fetchall()
    unread_count = int(rows[0]["unread_count"]) if rows else 0
    listed = [{k: v for k, v in row.items() if k != "unread_count"} for row in rows]
    if as_json:
        output.emit_json({"notifications": listed, "unread_count": unread_count})
        return
    output.show(listed, COLUMNS, as_json=False)
    click.echo(f"{unread_count} unread")


def _mark(
    tenant: str, user: str, notification_id: int, state: str, database_url: str | None, as_json: bool
) -> None:
    with connect(database_url) as conn:
        row = conn.execute(
            "select read_at, archived_at from conveyor.mark_notification(%s, %s, %s, %s)",
            (tenant, user, notification_id, state),
        ).fetchone()
    assert row is not None
    output.result(f"notification {notification_id}: {state}", {"id": notification_id, **row}, as_json=as_json)


def _marking(name: str, state: str, doc: str) -> click.Command:
    @click.argument("notification_id", type=click.IntRange(min=1), metavar="ID")
    @user_option
    @tenant_option
    @database_option
    @json_option
    @fail_cleanly
    def command(
        notification_id: int, user: str, tenant: str, database_url: str | None, as_json: bool
    ) -> None:
        _mark(tenant, user, notification_id, state, database_url, as_json)

    command.__doc__ = doc
    return notifications.command(name)(command)


_marking("read", "read", "Mark notification ID of the user read.")
_marking("unread", "unread", "Mark notification ID of the user unread.")
_marking("archive", "archived", "Archive notification ID of the user (it is no longer listed).")


@notifications.command("read-all")
@user_option
@tenant_option
@database_option
@json_option
@fail_cleanly
def read_all(user: str, tenant: str, database_url: str | None, as_json: bool) -> None:
    """Mark every unread notification of the user read."""
    with connect(database_url) as conn:
        row = conn.execute("select conveyor.mark_all_read(%s, %s) as marked", (tenant, user)).fetchone()
    assert row is not None
    output.result(f"{row['marked']} marked read", {"marked": row["marked"]}, as_json=as_json)


@notifications.command("send")
@user_option
@click.option("--title", required=True, help="The notification's title.")
@click.option("--message", default=None, help="Its text.")
@click.option("--type", "kind", type=click.Choice(TYPES), default=None, help="Its type (default info).")
@click.option(
    "--priority", type=click.Choice(PRIORITIES), default=None, help="Its priority (default normal)."
)
@click.option("--category", default=None, help="Its category (default general).")
@click.option("--action-url", default=None, help="Where its action leads.")
@tenant_option
@database_option
@json_option
@fail_cleanly
def send(
    user: str,
    title: str,
    message: str | None,
    kind: str | None,
    priority: str | None,
    category: str | None,
    action_url: str | None,
    tenant: str,
    database_url: str | None,
    as_json: bool,
) -> None:
    """Send the user a notification (conveyor.notify_user); open streams get it at once."""
    fields = {
        "title": title,
        "message": message,
        "type": kind,
        "priority": priority,
        "category": category,
        "action_url": action_url,
    }
    spec = {k: v for k, v in fields.items() if v is not None}
    with connect(database_url) as conn:
        row = conn.execute(
            "select conveyor.notify_user(%s, %s, %s) as id", (tenant, user, Jsonb(spec))
        ).fetchone()
    assert row is not None
    output.result(
        f"notification {row['id']} sent to {user}", {"id": row["id"], "user": user}, as_json=as_json
    )
