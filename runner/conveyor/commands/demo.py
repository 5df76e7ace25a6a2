"""`conveyor demo ...`: what `make run` shows a newcomer, all on this machine."""

from __future__ import annotations

import os
import signal
import threading

import click

from conveyor import logs
from conveyor.commands.common import database_option, fail_cleanly
from conveyor.db import resolve_database_url


@click.group()
def demo() -> None:
    """The demo platform, tenants and workflows, with local email and webhook sinks."""


@demo.command("load")
@database_option
@fail_cleanly
def load(database_url: str | None) -> None:
    """Create the demo platform tables, tenants acme and globex, connections and workflows."""
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
@click.option("--log-level", default="INFO", envvar="CONVEYOR_LOG_LEVEL", show_default=True)
@fail_cleanly
def run(database_url: str | None, activity: bool, every: float, log_level: str) -> None:
    """Load the demo, start the sinks and the runner (and activity) until Ctrl-C."""
    from conveyor import demo as demo_module
    from conveyor.runner import Runner, RunnerConfig

    logs.setup(log_level)
    url = resolve_database_url(database_url)
    published = demo_module.load(url)
    click.echo(
        f"demo: {len(published)} workflows published for tenants {', '.join(demo_module.TENANTS)}", err=True
    )
    env = demo_module.demo_environment()
    os.environ.update(env)
    stop_activity = threading.Event()
    with demo_module.sinks() as where:
        click.echo(
            f"demo: emails go to {where / 'outbox'}, HTTP requests to {where / 'sink.jsonl'}", err=True
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
