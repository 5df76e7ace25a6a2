"""The `conveyor` command line."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from conveyor import logs
from conveyor.cluster import Cluster
from conveyor.errors import ConveyorError

F = TypeVar("F", bound=Callable[..., Any])


def _fail_cleanly(func: F) -> F:
    """Show a ConveyorError as one line on stderr and exit 1, instead of a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConveyorError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def database_url_option(func: F) -> F:
    return click.option(
        "--database-url",
        envvar="CONVEYOR_DATABASE_URL",
        help="The database to use [env CONVEYOR_DATABASE_URL]; default: the embedded cluster.",
    )(func)


def resolve_database_url(database_url: str | None) -> str:
    """The given URL, or the embedded cluster's (started if it is not running)."""
    if database_url:
        return database_url
    cluster = Cluster.embedded()
    if cluster.start():
        click.echo(f"started the embedded PostgreSQL on port {cluster.port}", err=True)
    return cluster.url()


@click.group()
@click.version_option(package_name="conveyor")
def main() -> None:
    """Conveyor: a Postgres-native automation engine."""


# --- conveyor db -----------------------------------------------------------------


@main.group()
def db() -> None:
    """Manage the embedded PostgreSQL cluster (under .conveyor/pg)."""


@db.command("start")
@_fail_cleanly
def db_start() -> None:
    """Create (first time) and start the embedded cluster."""
    cluster = Cluster.embedded()
    started = cluster.start()
    state = "started" if started else "already running"
    click.echo(f"embedded PostgreSQL {state}: {cluster.url()}")


@db.command("stop")
@_fail_cleanly
def db_stop() -> None:
    """Stop the embedded cluster (fast shutdown)."""
    cluster = Cluster.embedded()
    click.echo("stopped" if cluster.stop() else "not running")


@db.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_fail_cleanly
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
@_fail_cleanly
def db_url(tcp: bool) -> None:
    """Print a connection string for psql and psycopg."""
    cluster = Cluster.embedded()
    if not cluster.is_initialized():
        raise ConveyorError("the embedded cluster does not exist yet: run `conveyor db start`")
    click.echo(cluster.url(tcp=tcp))


# --- conveyor migrate --------------------------------------------------------------


@main.command()
@database_url_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_fail_cleanly
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
    if not report.changed_anything:
        click.echo("up to date: nothing to apply")


# --- conveyor run ------------------------------------------------------------------


@main.command()
@database_url_option
@click.option(
    "--heartbeat-interval",
    type=float,
    default=10.0,
    show_default=True,
    envvar="CONVEYOR_HEARTBEAT_INTERVAL",
    help="Seconds between heartbeats.",
)
@click.option("--log-level", default="INFO", envvar="CONVEYOR_LOG_LEVEL", show_default=True)
@_fail_cleanly
def run(database_url: str | None, heartbeat_interval: float, log_level: str) -> None:
    """Run the runner in the foreground until Ctrl-C or SIGTERM."""
    from conveyor.worker import Runner

    logs.setup(log_level)
    runner = Runner(resolve_database_url(database_url), heartbeat_interval=heartbeat_interval)
    signal.signal(signal.SIGINT, runner.request_stop)
    signal.signal(signal.SIGTERM, runner.request_stop)
    runner.run()


if __name__ == "__main__":  # pragma: no cover
    main()
