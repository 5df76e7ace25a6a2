"""`conveyor serve`: the inbound HTTP listener (webhooks, the manual-run API, health)."""

from __future__ import annotations

import signal
import threading
from types import FrameType

import click

from conveyor import logs
from conveyor.commands.common import database_option, fail_cleanly
from conveyor.db import resolve_database_url


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
@click.option("--log-level", default="INFO", envvar="CONVEYOR_LOG_LEVEL", show_default=True)
@fail_cleanly
def serve(database_url: str | None, host: str, port: int, pool_size: int, log_level: str) -> None:
    """Serve inbound webhooks (/hooks/<path>), manual runs (POST /api/workflows/<slug>/runs) and /healthz."""
    from conveyor.serve import make_server

    logs.setup(log_level)
    server = make_server(resolve_database_url(database_url), host, port, pool_size)

    def stop(_signum: int, _frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever to return, so it must run on another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    click.echo(f"listening on http://{host}:{port}", err=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        server.pool.close()
