"""The `conveyor` command line: the top-level group, the embedded cluster and the migrator.

Every other command group lives in its own module under `conveyor.commands`.
"""

from __future__ import annotations

import json
import sys

import click

from conveyor import output
from conveyor.cluster import Cluster
from conveyor.commands.actions import actions
from conveyor.commands.approvals import approvals
from conveyor.commands.campaigns import campaigns
from conveyor.commands.common import database_option, fail_cleanly, json_option
from conveyor.commands.connections import connections
from conveyor.commands.demo import demo
from conveyor.commands.events import events
from conveyor.commands.executions import executions, trigger
from conveyor.commands.notifications import notifications
from conveyor.commands.plans import tenants, usage
from conveyor.commands.platform import api_keys, entities, tables, webhooks
from conveyor.commands.run import run as run_command
from conveyor.commands.serve import serve
from conveyor.commands.status import stats, status
from conveyor.commands.tokens import tokens
from conveyor.commands.workflows import dry_run, workflows
from conveyor.db import resolve_database_url
from conveyor.errors import ConveyorError


@click.group()
@click.version_option(package_name="conveyor")
def main() -> None:
    """Conveyor: a Postgres-native automation engine."""


# --- conveyor db -----------------------------------------------------------------


@main.group()
def db() -> None:
    """Manage the embedded PostgreSQL cluster (under .conveyor/pg)."""


@db.command("start")
@json_option
@fail_cleanly
def db_start(as_json: bool) -> None:
    """Create (first time) and start the embedded cluster."""
    cluster = Cluster.embedded()
    started = cluster.start()
    state = "started" if started else "already running"
    output.result(
        f"embedded PostgreSQL {state}: {cluster.url()}",
        {"state": state, "url": cluster.url()},
        as_json=as_json,
    )


@db.command("stop")
@json_option
@fail_cleanly
def db_stop(as_json: bool) -> None:
    """Stop the embedded cluster (fast shutdown)."""
    cluster = Cluster.embedded()
    state = "stopped" if cluster.stop() else "not running"
    output.result(state, {"state": state}, as_json=as_json)


@db.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@fail_cleanly
def db_status(as_json: bool) -> None:
    """Say whether the embedded cluster exists and runs, and where."""
    cluster = Cluster.embedded()
    status = {
        "initialized": cluster.is_initialized(),
        "running": cluster.is_running(),
        "data_dir": str(cluster.data_dir),
        "port": cluster.port,
        "server_version": cluster.server_version(),
        "url": cluster.url() if cluster.is_initialized() else None,
    }
    if as_json:
        click.echo(json.dumps(status, indent=2))
    else:
        for key, value in status.items():
            click.echo(f"{key:15} {value}")
    if not status["running"]:
        sys.exit(3)


@db.command("url")
@click.option("--tcp", is_flag=True, help="A loopback TCP URL with the password, instead of the socket.")
@fail_cleanly
def db_url(tcp: bool) -> None:
    """Print a connection string for psql and psycopg."""
    cluster = Cluster.embedded()
    if not cluster.is_initialized():
        raise ConveyorError("the embedded cluster does not exist yet: run `conveyor db start`")
    click.echo(cluster.url(tcp=tcp))


# --- conveyor migrate --------------------------------------------------------------


@main.command()
@database_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@fail_cleanly
def migrate(database_url: str | None, as_json: bool) -> None:
    """Apply pending migrations and the engine's functions (one transaction)."""
    from conveyor.migrate import migrate as run_migrate

    report = run_migrate(resolve_database_url(database_url))
    if as_json:
        click.echo(
            json.dumps(
                {
                    "applied": report.applied,
                    "functions_applied": report.functions_applied,
                    "functions_dropped": report.functions_dropped,
                    "extensions": [e.__dict__ for e in report.extensions],
                },
                indent=2,
            )
        )
        return
    for extension in report.extensions:
        click.echo(f"extension  {extension.describe()}")
    for name in report.applied:
        click.echo(f"applied    migrations/{name}")
    if report.functions_applied:
        click.echo(f"functions  {len(report.functions_applied)} files from sql/ applied")
    for signature in report.functions_dropped:
        click.echo(f"dropped    {signature} (no file in sql/ defines it any more)")
    if not report.changed_anything:
        click.echo("up to date: nothing to apply")


# --- the other command groups -------------------------------------------------------

for command in (
    run_command,
    serve,
    demo,
    connections,
    workflows,
    dry_run,
    executions,
    events,
    trigger,
    actions,
    status,
    stats,
    usage,
    tenants,
    tables,
    entities,
    api_keys,
    webhooks,
    tokens,
    notifications,
    approvals,
    campaigns,
):
    main.add_command(command)


if __name__ == "__main__":  # pragma: no cover
    main()
