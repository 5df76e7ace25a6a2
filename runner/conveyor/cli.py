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
    help="Seconds between heartbeats [env CONVEYOR_HEARTBEAT_INTERVAL].",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    envvar="CONVEYOR_CONCURRENCY",
    help="Actions performed at once [env CONVEYOR_CONCURRENCY].",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    envvar="CONVEYOR_BATCH_SIZE",
    help="Messages read from the queue at once [env CONVEYOR_BATCH_SIZE].",
)
@click.option(
    "--poll-interval",
    type=float,
    default=1.0,
    show_default=True,
    envvar="CONVEYOR_POLL_INTERVAL",
    help="Seconds between queue polls and ticks when no notification arrives [env CONVEYOR_POLL_INTERVAL].",
)
@click.option(
    "--visibility-margin",
    type=float,
    default=30.0,
    show_default=True,
    envvar="CONVEYOR_VISIBILITY_MARGIN",
    help="Seconds added to an action's timeout for its message's visibility timeout"
    " [env CONVEYOR_VISIBILITY_MARGIN].",
)
@click.option(
    "--shutdown-grace",
    type=float,
    default=30.0,
    show_default=True,
    envvar="CONVEYOR_SHUTDOWN_GRACE",
    help="Seconds in-flight actions get to finish after SIGTERM/Ctrl-C [env CONVEYOR_SHUTDOWN_GRACE].",
)
@click.option(
    "--allow-private-networks",
    default="",
    envvar="CONVEYOR_ALLOW_PRIVATE_NETWORKS",
    help="Comma-separated networks actions may reach although not public, e.g. 127.0.0.1/32"
    " [env CONVEYOR_ALLOW_PRIVATE_NETWORKS].",
)
@click.option(
    "--metrics-address",
    default="",
    envvar="CONVEYOR_METRICS_ADDRESS",
    help="Serve /metrics (Prometheus) and /healthz on host:port, e.g. 127.0.0.1:9464; off when empty"
    " [env CONVEYOR_METRICS_ADDRESS].",
)
@click.option("--log-level", default="INFO", envvar="CONVEYOR_LOG_LEVEL", show_default=True)
@_fail_cleanly
def run(
    database_url: str | None,
    heartbeat_interval: float,
    concurrency: int,
    batch_size: int,
    poll_interval: float,
    visibility_margin: float,
    shutdown_grace: float,
    allow_private_networks: str,
    metrics_address: str,
    log_level: str,
) -> None:
    """Run the runner in the foreground until Ctrl-C or SIGTERM.

    Connection secrets are decrypted with CONVEYOR_SECRET_KEY (environment only).
    """
    import os

    from conveyor.worker import Runner, RunnerConfig

    logs.setup(log_level)
    config = RunnerConfig(
        database_url=resolve_database_url(database_url),
        heartbeat_interval=heartbeat_interval,
        concurrency=concurrency,
        batch_size=batch_size,
        poll_interval=poll_interval,
        visibility_margin=visibility_margin,
        shutdown_grace=shutdown_grace,
        secret_key=os.environ.get("CONVEYOR_SECRET_KEY", ""),
        allow_private_networks=allow_private_networks,
        metrics_address=metrics_address,
    )
    runner = Runner(config)
    signal.signal(signal.SIGINT, runner.request_stop)
    signal.signal(signal.SIGTERM, runner.request_stop)
    runner.run()


# --- conveyor connections ----------------------------------------------------------


def _secret_box(required: bool) -> Any:
    import os

    from conveyor.secrets import SecretBox

    if not os.environ.get("CONVEYOR_SECRET_KEY", "").strip():
        if required:
            raise ConveyorError(
                "CONVEYOR_SECRET_KEY is not set (generate one with `conveyor connections keygen`)"
            )
        return None
    return SecretBox.from_env()


def _json_object(text: str | None, what: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConveyorError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ConveyorError(f"{what} must be a JSON object")
    return value


@main.group()
def connections() -> None:
    """Manage connections (SMTP servers, webhooks, Slack, Discord, SMS) of a tenant.

    Secrets are encrypted with CONVEYOR_SECRET_KEY before they reach the database and are
    never printed.
    """


@connections.command("keygen")
def connections_keygen() -> None:
    """Print a new key for CONVEYOR_SECRET_KEY."""
    from conveyor.secrets import generate_key

    click.echo(generate_key())


@connections.command("add")
@database_url_option
@click.option("--tenant", required=True, help="The tenant that owns the connection.")
@click.option(
    "--kind",
    required=True,
    type=click.Choice(["smtp", "webhook", "slack", "discord", "twilio"]),
)
@click.option(
    "--config",
    "config_json",
    help='Non-secret settings as a JSON object, e.g. \'{"host": "smtp.example.com"}\'.',
)
@click.option(
    "--secret-file",
    type=click.File("r"),
    help="Read the secret fields (a JSON object) from this file; '-' reads stdin. Not taken"
    " as an argument so it stays out of shell history and process lists.",
)
@click.option("--replace", is_flag=True, help="Replace an existing connection of that name.")
@click.argument("name")
@_fail_cleanly
def connections_add(
    database_url: str | None,
    tenant: str,
    kind: str,
    config_json: str | None,
    secret_file: Any,
    replace: bool,
    name: str,
) -> None:
    """Add (or with --replace, replace) the connection NAME."""
    import psycopg

    from conveyor import connections as conns

    config = _json_object(config_json, "--config")
    secret = _json_object(secret_file.read() if secret_file else None, "the secret")
    box = _secret_box(required=bool(secret))
    with psycopg.connect(resolve_database_url(database_url), autocommit=True) as conn:
        conns.add(
            conn, box, tenant_id=tenant, name=name, kind=kind, config=config, secret=secret, replace=replace
        )
    click.echo(f"connection {name} ({kind}) saved for tenant {tenant}")


@connections.command("list")
@database_url_option
@click.option("--tenant", required=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_fail_cleanly
def connections_list(database_url: str | None, tenant: str, as_json: bool) -> None:
    """List a tenant's connections (settings only; secrets are never shown)."""
    import psycopg

    from conveyor import connections as conns

    with psycopg.connect(resolve_database_url(database_url), autocommit=True) as conn:
        rows = conns.list_connections(conn, tenant)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "kind", "config", "secret", "updated")
    for row in rows:
        table.add_row(
            row["name"],
            row["kind"],
            json.dumps(row["config"]),
            "set" if row["has_secret"] else "-",
            str(row["updated_at"]),
        )
    Console().print(table)


@connections.command("remove")
@database_url_option
@click.option("--tenant", required=True)
@click.argument("name")
@_fail_cleanly
def connections_remove(database_url: str | None, tenant: str, name: str) -> None:
    """Remove the connection NAME."""
    import psycopg

    from conveyor import connections as conns

    with psycopg.connect(resolve_database_url(database_url), autocommit=True) as conn:
        if not conns.remove(conn, tenant, name):
            raise ConveyorError(f"tenant {tenant!r} has no connection named {name!r}")
    click.echo(f"connection {name} removed")


@connections.command("test")
@database_url_option
@click.option("--tenant", required=True)
@click.option(
    "--allow-private-networks",
    default="",
    envvar="CONVEYOR_ALLOW_PRIVATE_NETWORKS",
    help="As for `conveyor run` [env CONVEYOR_ALLOW_PRIVATE_NETWORKS].",
)
@click.argument("name")
@_fail_cleanly
def connections_test(database_url: str | None, tenant: str, allow_private_networks: str, name: str) -> None:
    """Check that NAME decrypts and its endpoint is reachable (sends no message)."""
    import psycopg

    from conveyor import connections as conns
    from conveyor.connection_check import check
    from conveyor.netguard import NetworkPolicy

    box = _secret_box(required=False)
    with psycopg.connect(resolve_database_url(database_url), autocommit=True) as conn:
        connection = conns.load(conn, box, tenant, name)
    try:
        policy = NetworkPolicy.parse(allow_private_networks)
    except ValueError as exc:
        raise ConveyorError(str(exc)) from exc
    click.echo(f"connection {name} ({connection.kind}): {check(connection, policy)}")


@connections.command("rotate")
@database_url_option
@click.option("--tenant", help="Only this tenant's connections (default: every tenant).")
@_fail_cleanly
def connections_rotate(database_url: str | None, tenant: str | None) -> None:
    """Re-encrypt every secret under the first key of CONVEYOR_SECRET_KEY."""
    import psycopg

    from conveyor import connections as conns

    box = _secret_box(required=True)
    with psycopg.connect(resolve_database_url(database_url), autocommit=True) as conn:
        count = conns.rotate(conn, box, tenant)
    click.echo(f"re-encrypted {count} secret(s) under the first key")


if __name__ == "__main__":  # pragma: no cover
    main()
