"""`conveyor approvals list | approve | reject | delegate`: a user's approval requests and
their decisions, through the SQL API of sql/approvals.sql (docs/approvals.md). The CLI acts
for the user named by --user, as the platform does for the user it has authenticated."""

from __future__ import annotations

from typing import Any

import click

from conveyor import output
from conveyor.commands.common import database_option, fail_cleanly, json_option, tenant_option
from conveyor.db import connect

# the table's columns (--json gives every field of conveyor.list_approvals)
LIST_COLUMNS = ["id", "workflow", "step", "title", "state", "asked", "due"]


def user_option(func: Any) -> Any:
    return click.option("--user", "-u", required=True, help="The user who acts (an approver).")(func)


@click.group()
def approvals() -> None:
    """Approval requests of approval steps: list them, approve, reject, delegate."""


@approvals.command("list")
@user_option
@click.option(
    "--all",
    "every",
    is_flag=True,
    help="Every request the user holds or acted on, not only those asking them now.",
)
@click.option("--limit", type=click.IntRange(1, 500), default=100, show_default=True)
@tenant_option
@database_option
@json_option
@fail_cleanly
def list_approvals(
    user: str, every: bool, limit: int, tenant: str, database_url: str | None, as_json: bool
) -> None:
    """The requests asking USER now (with --all: every request of theirs), newest first."""
    with connect(database_url) as conn:
        rows = conn.execute(
            "select * from conveyor.list_approvals(%s, %s, %s, %s)", (tenant, user, not every, limit)
        ).fetchall()
    if as_json:
        output.emit_json([dict(r) for r in rows])
        return
    output.table(
        [
            {
                "id": r["request_id"],
                "workflow": r["workflow"],
                "step": r["step_id"],
                "title": r["title"],
                "state": r["outcome"] or r["state"],
                "asked": "yes" if r["asked"] else "",
                "due": output.timestamp(r["due_at"]) if r["due_at"] else None,
            }
            for r in rows
        ],
        LIST_COLUMNS,
    )


PAST = {"approve": "approved", "reject": "rejected"}


def _said(answer: dict[str, Any]) -> str:
    """What a decision did, in one line."""
    did = f"approval request {answer['request_id']}: {answer['user']} {PAST[answer['decision']]}"
    if answer["outcome"] is None:
        return f"{did}; still pending"
    moved = "the execution continues" if answer["continued"] else "the execution continues at the next tick"
    return f"{did}; request {answer['outcome']}, {moved}"


def _decision_command(decision: str) -> None:
    """`approvals approve` and `approvals reject`: conveyor.decide_approval with the note."""

    @approvals.command(decision, help=f"USER {decision}s approval request REQUEST_ID.")
    @click.argument("request_id", type=int)
    @user_option
    @click.option("--note", help="Why (kept in the audit and the step's output).")
    @tenant_option
    @database_option
    @json_option
    @fail_cleanly
    def command(
        request_id: int, user: str, note: str | None, tenant: str, database_url: str | None, as_json: bool
    ) -> None:
        with connect(database_url) as conn:
            row = conn.execute(
                "select conveyor.decide_approval(%s, %s, %s, %s, %s) as r",
                (tenant, user, request_id, decision, note),
            ).fetchone()
        answer = row["r"] if row else {}
        output.result(_said(answer), answer, as_json=as_json)


_decision_command("approve")
_decision_command("reject")


@approvals.command("delegate")
@click.argument("request_id", type=int)
@user_option
@click.option("--to", "to_user", required=True, help="The user who decides instead.")
@click.option("--reason", help="Why (kept in the audit and the step's output).")
@tenant_option
@database_option
@json_option
@fail_cleanly
def delegate(
    request_id: int,
    user: str,
    to_user: str,
    reason: str | None,
    tenant: str,
    database_url: str | None,
    as_json: bool,
) -> None:
    """USER hands their part of approval request REQUEST_ID to another user."""
    with connect(database_url) as conn:
        row = conn.execute(
            "select conveyor.delegate_approval(%s, %s, %s, %s, %s) as r",
            (tenant, user, request_id, to_user, reason),
        ).fetchone()
    answer = row["r"] if row else {}
    output.result(f"approval request {request_id}: {user} delegated to {to_user}", answer, as_json=as_json)
