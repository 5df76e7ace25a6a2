"""`conveyor campaigns ...`: apply campaign documents, list and show them, enroll contacts,
pause / resume / cancel a campaign or one enrollment, and read the counters
(docs/campaigns.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from psycopg.types.json import Jsonb

from conveyor import output
from conveyor.commands.common import (
    database_option,
    fail_cleanly,
    json_option,
    load_json_option,
    read_document,
    tenant_option,
)
from conveyor.db import connect
from conveyor.errors import ConveyorError

STAT_COLUMNS = [
    "step_key", "variant", "enrolled", "sent", "delivered", "opened", "clicked", "replied", "bounced",
    "complained", "unsubscribed", "completed", "stopped",
]  # fmt: skip


@click.group()
def campaigns() -> None:
    """Email / SMS sequences run by the engine (docs/campaigns.md)."""


@campaigns.command()
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@tenant_option
@database_option
@json_option
@fail_cleanly
def apply(files: tuple[Path, ...], tenant: str, database_url: str | None, as_json: bool) -> None:
    """Validate and apply campaign documents (a new version when changed)."""
    results: list[dict[str, Any]] = []
    with connect(database_url) as conn:
        for path in files:
            document = read_document(path)
            row = conn.execute(
                "select * from conveyor.apply_campaign(%s, %s)", (tenant, Jsonb(document))
            ).fetchone()
            assert row is not None
            results.append({"file": str(path), "slug": document.get("slug"), **row})
    if as_json:
        output.emit_json(results)
        return
    for r in results:
        click.echo(
            f"applied  {r['slug']} version {r['version']} (workflow version {r['workflow_version']})  ({r['file']})"
        )


@campaigns.command("list")
@tenant_option
@database_option
@json_option
@fail_cleanly
def list_campaigns(tenant: str, database_url: str | None, as_json: bool) -> None:
    """The tenant's campaigns."""
    with connect(database_url) as conn:
        rows = conn.execute("select * from conveyor.list_campaigns(%s)", (tenant,)).fetchall()
    if as_json:
        output.emit_json(rows)
        return
    output.table(rows, ["slug", "name", "audience", "version", "paused", "active", "enrolled"])


@campaigns.command()
@click.argument("slug")
@tenant_option
@database_option
@json_option
@fail_cleanly
def show(slug: str, tenant: str, database_url: str | None, as_json: bool) -> None:
    """One campaign: its version, enrollments by status, A/B decisions."""
    with connect(database_url) as conn:
        row = conn.execute("select conveyor.campaign_detail(%s, %s) as d", (tenant, slug)).fetchone()
    detail: dict[str, Any] = row["d"] if row else {}
    if as_json:
        output.emit_json(detail)
        return
    click.echo(
        f"campaign {detail['slug']} ({detail['name']}), version {detail['version']}, audience {detail['audience']},"
        f" workflow {detail['workflow']}{', paused' if detail['paused'] else ''}"
    )
    click.echo(
        "enrollments: " + (", ".join(f"{k} {v}" for k, v in sorted(detail["enrollments"].items())) or "none")
    )
    for winner in detail["winners"]:
        click.echo(
            f"winner of {winner['step_key']}: {winner['winner']} by {winner['metric']} ({winner['figures']})"
        )


@campaigns.command()
@click.argument("slug")
@click.argument("ids", nargs=-1)
@click.option(
    "--where", "condition", help='A condition over the audience row, e.g. \'{"field": "row.status", ...}\'.'
)
@click.option(
    "--limit", type=int, default=1000, show_default=True, help="At most this many rows with --where."
)
@tenant_option
@database_option
@json_option
@fail_cleanly
def enroll(
    slug: str, ids: tuple[str, ...], condition: str | None, limit: int, tenant: str, database_url: str | None,
    as_json: bool,
) -> None:  # fmt: skip
    """Enroll contacts in SLUG by id, or those matching --where."""
    if bool(ids) == bool(condition):
        raise ConveyorError("give either ids or --where")
    with connect(database_url) as conn:
        if condition:
            rows = conn.execute(
                "select * from conveyor.enroll_campaign_where(%s, %s, %s, %s)",
                (tenant, slug, Jsonb(load_json_option(condition, "--where")), limit),
            ).fetchall()
        else:
            rows = conn.execute(
                "select * from conveyor.enroll_campaign(%s, %s, %s)", (tenant, slug, list(ids))
            ).fetchall()
    if as_json:
        output.emit_json(rows)
        return
    output.table(rows, ["entity_id", "result", "enrollment_id", "execution_id"])


def _control(
    action: str, slug: str, enrollment: int | None, tenant: str, database_url: str | None, as_json: bool
) -> None:
    with connect(database_url) as conn:
        if enrollment is not None:
            row = conn.execute(
                "select conveyor.control_enrollment(%s, %s, %s) as r", (tenant, enrollment, action)
            ).fetchone()
            status = row["r"] if row else None
            output.result(f"enrollment {enrollment}: {status}", {"enrollment_id": enrollment, "status": status},
                          as_json=as_json)  # fmt: skip
            return
        # a batch of enrollments a transaction, until none is left (sql/campaign_control.sql)
        count = 0
        while True:
            row = conn.execute(
                "select * from conveyor.control_campaign(%s, %s, %s, 1000)", (tenant, slug, action)
            ).fetchone()
            assert row is not None
            count += row["changed"]
            if row["remaining"] == 0 or row["changed"] == 0:
                break
        # (left: enrollments another transaction held locked; run the command again)
        left = f", {row['remaining']} left" if row["remaining"] else ""
        output.result(f"campaign {slug}: {action} ({count} enrollment(s){left})",
                      {"slug": slug, "enrollments": count, "remaining": row["remaining"]},
                      as_json=as_json)  # fmt: skip


def _control_command(action: str) -> Any:
    @click.argument("slug")
    @click.option("--enrollment", type=int, help="Only this enrollment (its id).")
    @tenant_option
    @database_option
    @json_option
    @fail_cleanly
    def command(
        slug: str, enrollment: int | None, tenant: str, database_url: str | None, as_json: bool
    ) -> None:
        _control(action, slug, enrollment, tenant, database_url, as_json)

    command.__doc__ = f"{action.capitalize()} campaign SLUG (every running enrollment), or one --enrollment."
    return campaigns.command(action)(command)


pause = _control_command("pause")
resume = _control_command("resume")
cancel = _control_command("cancel")


@campaigns.command()
@click.argument("slug")
@tenant_option
@database_option
@json_option
@fail_cleanly
def stats(slug: str, tenant: str, database_url: str | None, as_json: bool) -> None:
    """Counters per campaign (step and variant blank), step and variant."""
    with connect(database_url) as conn:
        rows = conn.execute("select * from conveyor.campaign_stats(%s, %s)", (tenant, slug)).fetchall()
    if as_json:
        output.emit_json(rows)
        return
    output.table(rows, STAT_COLUMNS)
