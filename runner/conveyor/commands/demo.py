"""`conveyor demo ...`: what `make run` shows a newcomer, all on this machine."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from pathlib import Path

import click

from conveyor import logs
from conveyor.commands.common import database_option, fail_cleanly
from conveyor.db import resolve_database_url
from conveyor.errors import ConveyorError


@click.group()
def demo() -> None:
    """The demo platform, tenants and workflows, with local email and webhook sinks."""


@demo.command("load")
@database_option
@fail_cleanly
def load(database_url: str | None) -> None:
    """Create the demo platform tables, tenants acme and globex, connections, workflows and
    the welcome campaign."""
    from conveyor.demo import load as load_demo

    for line in load_demo(resolve_database_url(database_url)):
        click.echo(f"published  {line}")


@demo.command("run")
@database_option
@click.option(
    "--activity/--no-activity",
    default=True,
    show_default=True,
    help="Generate platform activity (new leads, won deals, invoices) every few seconds.",
)
@click.option("--every", default=3.0, show_default=True, help="Seconds between generated activities.")
@click.option(
    "--campaign-delay",
    metavar="DURATION",
    help="Every welcome-campaign step's delay (e.g. 20s) instead of examples/campaigns/demo-welcome.yaml's.",
)
@click.option(
    "--provider/--no-provider",
    default=True,
    show_default=True,
    help="Simulate the email provider: delivered / opened / clicked / bounced webhooks and replies.",
)
@click.option("--seed", default=7, show_default=True, help="The simulated provider's random seed.")
@click.option(
    "--directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the outbox, inbox, sink and the demo's keys live [default: .conveyor/demo].",
)
@click.option("--serve-port", type=int, help="The demo's conveyor serve [default: 8898].")
@click.option("--smtp-port", type=int, help="The SMTP outbox [default: 8825].")
@click.option("--http-port", type=int, help="The HTTP sink [default: 8899].")
@click.option("--log-level", default="INFO", envvar="CONVEYOR_LOG_LEVEL", show_default=True)
@fail_cleanly
def run(
    database_url: str | None,
    activity: bool,
    every: float,
    campaign_delay: str | None,
    provider: bool,
    seed: int,
    directory: Path | None,
    serve_port: int | None,
    smtp_port: int | None,
    http_port: int | None,
    log_level: str,
) -> None:
    """Load the demo; start the sinks, conveyor serve, the simulated email provider, the
    runner (and activity) until Ctrl-C."""
    from conveyor import demo as demo_module
    from conveyor.demo_provider import SimulatedProvider, read_accounts
    from conveyor.runner import Runner, RunnerConfig
    from conveyor.serve import tokens
    from conveyor.serve.server import ServeSettings, serve_in_thread

    logs.setup(log_level)
    # serve's start-up lines and one access line per webhook would drown the demo's own
    for name in ("uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.WARNING)
    url = resolve_database_url(database_url)
    setup = demo_module.DemoSetup(
        directory or demo_module.DEMO_DIR,
        http_port or demo_module.HTTP_PORT,
        smtp_port or demo_module.SMTP_PORT,
        serve_port or demo_module.SERVE_PORT,
        campaign_delay,
    )
    published = demo_module.load(url, setup)
    click.echo(
        f"demo: {len(published)} workflows and campaigns published for tenants {', '.join(demo_module.TENANTS)}",
        err=True,
    )
    env = demo_module.demo_environment(setup.directory)
    os.environ.update(env)
    stop_activity = threading.Event()
    simulated = (
        SimulatedProvider(read_accounts(setup.accounts_file), setup.directory / "inbox", seed=seed).start()
        if provider
        else None
    )
    with contextlib.ExitStack() as stack:
        try:
            where = stack.enter_context(demo_module.sinks(setup, simulated.offer if simulated else None))
            served = stack.enter_context(
                serve_in_thread(
                    ServeSettings(url, port=setup.serve_port, token_secret=env["CONVEYOR_TOKEN_SECRET"])
                )
            )
        except OSError as exc:  # a port taken, most likely by another demo
            if simulated:
                simulated.stop()
            raise ConveyorError(
                f"the demo cannot listen: {exc.strerror or exc} (--serve-port {setup.serve_port},"
                f" --smtp-port {setup.smtp_port}, --http-port {setup.http_port})"
            ) from None
        click.echo(
            f"demo: emails go to {where / 'outbox'}, HTTP requests to {where / 'sink.jsonl'};"
            f" conveyor serve (tracking webhooks, unsubscribe, console) on {served.url}",
            err=True,
        )
        token = tokens.sign(env["CONVEYOR_TOKEN_SECRET"], "acme", "demo", 12 * 3600)
        click.echo(
            f"demo: the console for acme (12 h): {served.url}/console/campaigns?token={token}", err=True
        )
        if activity:
            threading.Thread(
                target=demo_module.generate_activity,
                args=(url, stop_activity, every),
                name="demo-activity",
                daemon=True,
            ).start()
        runner = Runner(
            RunnerConfig(
                database_url=url,
                secret_key=env["CONVEYOR_SECRET_KEY"],
                allow_private_networks=env["CONVEYOR_ALLOW_PRIVATE_NETWORKS"],
                poll_interval=0.5,
            )
        )
        signal.signal(signal.SIGINT, runner.request_stop)
        signal.signal(signal.SIGTERM, runner.request_stop)
        try:
            runner.run()
        finally:
            stop_activity.set()
            if simulated:
                simulated.stop()
