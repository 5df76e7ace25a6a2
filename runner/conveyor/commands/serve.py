"""`conveyor serve`: the inbound HTTP server (webhooks, the manual-run API, health)."""

from __future__ import annotations

import click

from conveyor import logs
from conveyor.commands.common import database_option, fail_cleanly
from conveyor.db import resolve_database_url
from conveyor.serve import Limits, ServeSettings, run
from conveyor.serve.tokens import secret_from_env


@click.command("serve")
@database_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar="CONVEYOR_HTTP_HOST",
    help="Address to listen on [env CONVEYOR_HTTP_HOST].",
)
@click.option(
    "--port",
    default=8080,
    show_default=True,
    envvar="CONVEYOR_HTTP_PORT",
    help="Port to listen on [env CONVEYOR_HTTP_PORT].",
)
@click.option("--pool-size", default=8, show_default=True, help="Database connections (bounds concurrency).")
@click.option(
    "--max-body-bytes",
    default=Limits.max_body_bytes,
    show_default=True,
    type=click.IntRange(min=1),
    envvar="CONVEYOR_HTTP_MAX_BODY_BYTES",
    help="Larger bodies are refused (413) before they are read [env CONVEYOR_HTTP_MAX_BODY_BYTES].",
)
@click.option(
    "--max-connections",
    default=Limits.max_connections,
    show_default=True,
    type=click.IntRange(min=1),
    envvar="CONVEYOR_HTTP_MAX_CONNECTIONS",
    help="Open connections held at once; more get 503 [env CONVEYOR_HTTP_MAX_CONNECTIONS].",
)
@click.option(
    "--request-timeout",
    default=Limits.request_timeout_s,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    envvar="CONVEYOR_HTTP_REQUEST_TIMEOUT",
    help="Seconds a whole request (line, headers, body) may take to arrive; also the idle "
    "keep-alive time [env CONVEYOR_HTTP_REQUEST_TIMEOUT].",
)
@click.option(
    "--max-json-depth",
    default=Limits.max_json_depth,
    show_default=True,
    type=click.IntRange(min=1),
    envvar="CONVEYOR_HTTP_MAX_JSON_DEPTH",
    help="JSON bodies nested deeper are refused (400) [env CONVEYOR_HTTP_MAX_JSON_DEPTH].",
)
@click.option(
    "--max-header-bytes",
    default=Limits.max_header_bytes,
    show_default=True,
    type=click.IntRange(min=1024),
    envvar="CONVEYOR_HTTP_MAX_HEADER_BYTES",
    help="Request line and headers together; longer gets 431 [env CONVEYOR_HTTP_MAX_HEADER_BYTES].",
)
@click.option("--log-level", default="INFO", envvar="CONVEYOR_LOG_LEVEL", show_default=True)
@fail_cleanly
def serve(
    database_url: str | None,
    host: str,
    port: int,
    pool_size: int,
    max_body_bytes: int,
    max_connections: int,
    request_timeout: float,
    max_json_depth: int,
    max_header_bytes: int,
    log_level: str,
) -> None:
    """Serve inbound webhooks (/hooks/<path>), manual runs (POST /api/workflows/<slug>/runs),
    who a user token proves (GET /api/me, with CONVEYOR_TOKEN_SECRET) and /healthz."""
    logs.setup(log_level)
    limits = Limits(max_body_bytes, max_connections, request_timeout, max_json_depth, max_header_bytes)
    settings = ServeSettings(
        resolve_database_url(database_url),
        host,
        port,
        pool_size,
        limits,
        token_secret=secret_from_env(required=False),
    )
    if settings.token_secret is None:
        click.echo("CONVEYOR_TOKEN_SECRET is not set: routes that take user tokens answer 503", err=True)
    run(settings, lambda line: click.echo(line, err=True))
