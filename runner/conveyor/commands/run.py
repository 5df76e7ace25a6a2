"""`conveyor run`: the runner in the foreground."""

from __future__ import annotations

import signal

import click

from conveyor import logs
from conveyor.commands.common import database_option, fail_cleanly
from conveyor.db import resolve_database_url
from conveyor.results import MAX_OUTPUT_BYTES


@click.command()
@database_option
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
@click.option(
    "--max-output-bytes",
    type=int,
    default=MAX_OUTPUT_BYTES,
    show_default=True,
    envvar="CONVEYOR_MAX_OUTPUT_BYTES",
    help="Largest action output (and error) written back, in bytes of JSON; a larger one is truncated"
    " with a marker [env CONVEYOR_MAX_OUTPUT_BYTES].",
)
@click.option("--log-level", default="INFO", envvar="CONVEYOR_LOG_LEVEL", show_default=True)
@fail_cleanly
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
    max_output_bytes: int,
    log_level: str,
) -> None:
    """Run the runner in the foreground until Ctrl-C or SIGTERM.

    Connection secrets are decrypted with CONVEYOR_SECRET_KEY (environment only).
    """
    import os

    from conveyor.runner import Runner, RunnerConfig

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
        max_output_bytes=max_output_bytes,
    )
    runner = Runner(config)
    signal.signal(signal.SIGINT, runner.request_stop)
    signal.signal(signal.SIGTERM, runner.request_stop)
    runner.run()
