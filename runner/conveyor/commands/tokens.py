"""`conveyor tokens`: mint the short-lived user tokens `conveyor serve` verifies (docs/tokens.md)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import click

from conveyor import output
from conveyor.commands.common import database_option, fail_cleanly, json_option
from conveyor.db import connect
from conveyor.errors import ConveyorError
from conveyor.serve import tokens as user_tokens


@click.group()
def tokens() -> None:
    """Signed tokens for a platform's user (the notification stream and the console)."""


@tokens.command("sign")
@click.option("--tenant", "-t", required=True, help="The tenant the user belongs to.")
@click.option("--user", "-u", required=True, help="The platform's user id.")
@click.option(
    "--ttl", default="15m", show_default=True, help="How long it is valid: 90s, 15m, 1h (at most 24h)."
)
@click.option("--operator", is_flag=True, help="Access to every tenant (an operator of the installation).")
@database_option
@json_option
@fail_cleanly
def sign(tenant: str, user: str, ttl: str, operator: bool, database_url: str | None, as_json: bool) -> None:
    """Print a token for USER of TENANT, signed with CONVEYOR_TOKEN_SECRET."""
    ttl_s = user_tokens.parse_ttl(ttl)
    secret = user_tokens.secret_from_env()
    assert secret is not None
    if not user.strip():
        raise ConveyorError("--user must not be empty")
    with connect(database_url) as conn:
        known = conn.execute("select 1 from conveyor.tenants where tenant_id = %s", (tenant,)).fetchone()
    if known is None:
        raise ConveyorError(f"tenant {tenant!r} does not exist")
    now = time.time()
    token = user_tokens.sign(secret, tenant, user, ttl_s, operator=operator, now=now)
    expires = datetime.fromtimestamp(int(now) + ttl_s, UTC).isoformat().replace("+00:00", "Z")
    data = {"token": token, "tenant": tenant, "user": user, "operator": operator, "expires_at": expires}
    output.result(token, data, as_json=as_json)
