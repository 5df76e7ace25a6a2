"""The `make run` demo: a small platform, two tenants, the example workflows and the demo
campaign, local sinks, activity.

Everything stays on this machine: emails land as .eml files in `.conveyor/demo/outbox/`
(a local SMTP server), webhooks, Slack, Discord and SMS requests are appended to
`.conveyor/demo/sink.jsonl` (a local HTTP server that also answers like Twilio's API). A
simulated email provider (demo_provider.py) reports what happened to each outbox message to
the demo's `conveyor serve`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import random
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from psycopg.types.json import Jsonb

from conveyor import connections
from conveyor.secrets import SecretBox, generate_key
from conveyor.settings import PROJECT_DIR

log = logging.getLogger("conveyor.demo")

EXAMPLES = PROJECT_DIR / "examples"
DEMO_DIR = PROJECT_DIR / ".conveyor" / "demo"
HTTP_PORT = 8899
SMTP_PORT = 8825
SERVE_PORT = 8898
TENANTS = {"acme": ("Acme Corp", "Europe/Berlin"), "globex": ("Globex Inc", "America/New_York")}
CAMPAIGN = EXAMPLES / "campaigns" / "demo-welcome.yaml"
ENROLL_WORKFLOW = EXAMPLES / "campaigns" / "demo-welcome-enroll.yaml"  # new contacts join CAMPAIGN


@dataclass(frozen=True)
class DemoSetup:
    """Where the demo keeps its files and listens; tests give a temporary directory, free
    ports and short campaign delays."""

    directory: Path = DEMO_DIR
    http_port: int = HTTP_PORT
    smtp_port: int = SMTP_PORT
    serve_port: int = SERVE_PORT
    campaign_delay: str | None = None  # every campaign step's delay (e.g. "20s"), else the file's

    @property
    def serve_url(self) -> str:
        return f"http://127.0.0.1:{self.serve_port}"

    @property
    def accounts_file(self) -> Path:
        """The simulated provider's accounts: sender domain → tenant, webhook URL, secret."""
        return self.directory / "provider.json"


def sender(tenant_id: str) -> str:
    """Each tenant sends from its own domain, as each would have its own provider account:
    the simulated provider tells them apart by it."""
    return f"automations@{tenant_id}.demo.example"


def demo_environment(directory: Path = DEMO_DIR) -> dict[str, str]:
    """The settings the demo runner and serve need: a secret key and a token secret (each
    kept in .conveyor/demo) and the loopback allowlist (the sinks live on 127.0.0.1)."""
    return {
        "CONVEYOR_SECRET_KEY": os.environ.get("CONVEYOR_SECRET_KEY")
        or kept(directory / "secret.key", generate_key),
        "CONVEYOR_TOKEN_SECRET": os.environ.get("CONVEYOR_TOKEN_SECRET")
        or kept(directory / "token.secret", lambda: secrets.token_urlsafe(48)),
        "CONVEYOR_ALLOW_PRIVATE_NETWORKS": os.environ.get("CONVEYOR_ALLOW_PRIVATE_NETWORKS")
        or "127.0.0.1/32",
    }


def kept(path: Path, make: Callable[[], str]) -> str:
    """A secret made once and kept in the demo's directory (readable by its owner only)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(make() + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def load(database_url: str, setup: DemoSetup = DemoSetup()) -> list[str]:
    """Create the demo platform, tenants, connections, workflows and campaign (idempotent),
    and the tracking webhook and inbound route the simulated provider posts to (their URLs and
    secrets written to provider.json)."""
    env = demo_environment(setup.directory)
    box = SecretBox(env["CONVEYOR_SECRET_KEY"])
    published = []
    accounts: dict[str, dict[str, str]] = {}
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute((EXAMPLES / "platform.sql").read_text().encode())
        for tenant_id, (name, zone) in TENANTS.items():
            conn.execute(
                "insert into conveyor.tenants (tenant_id, name, timezone) values (%s, %s, %s)"
                " on conflict (tenant_id) do nothing",
                (tenant_id, name, zone),
            )
            for conn_name, kind, config, secret in demo_connections(tenant_id, setup):
                connections.add(
                    conn,
                    box,
                    tenant_id=tenant_id,
                    name=conn_name,
                    kind=kind,
                    config=config,
                    secret=secret,
                    replace=True,
                )
            for path in sorted((EXAMPLES / "workflows").glob("*.yaml")):
                published.append(publish(conn, tenant_id, path))
            campaign = demo_campaign(setup.campaign_delay)
            row = conn.execute(
                "select version from conveyor.apply_campaign(%s, %s)", (tenant_id, Jsonb(campaign))
            ).fetchone()
            published.append(f"{tenant_id}/{campaign['slug']} (campaign) v{row[0] if row else '?'}")
            published.append(publish(conn, tenant_id, ENROLL_WORKFLOW))  # after it: publish checks the slug
            # What a platform does once per provider: store its signing secret, give it the URL
            # (Svix: Resend's tracking events; Mailgun: the inbound route that forwards replies).
            hook_secret = tracking_secret(setup.directory, tenant_id)
            inbound_key = kept(setup.directory / f"inbound-{tenant_id}.key", lambda: secrets.token_hex(24))
            paths = conn.execute(
                "select conveyor.set_email_webhook(%s, 'svix', %s) ->> 'path',"
                " conveyor.set_email_webhook(%s, 'mailgun', %s) ->> 'path'",
                (tenant_id, hook_secret, tenant_id, inbound_key),
            ).fetchone()
            assert paths is not None
            accounts[sender(tenant_id).split("@")[1]] = {
                "tenant": tenant_id,
                "webhook_url": setup.serve_url + paths[0],
                "secret": hook_secret,
                "inbound_url": setup.serve_url + paths[1].replace("/email/hooks/", "/email/inbound/"),
                "inbound_key": inbound_key,
            }
    setup.accounts_file.write_text(json.dumps(accounts, indent=2) + "\n")
    setup.accounts_file.chmod(0o600)
    return published


def publish(conn: psycopg.Connection[Any], tenant_id: str, path: Path) -> str:
    """Publish a workflow file for the tenant (an unchanged document makes no new version)."""
    document = read_yaml(path)
    row = conn.execute(
        "select workflow_id, version from conveyor.publish(%s, %s)", (tenant_id, Jsonb(document))
    ).fetchone()
    return f"{tenant_id}/{document['slug']} v{row[1] if row else '?'}"


def read_yaml(path: Path) -> dict[str, Any]:
    """A document as JSON would carry it (YAML dates become text)."""
    import yaml

    return json.loads(json.dumps(yaml.safe_load(path.read_text()), default=str))  # type: ignore[no-any-return]


def demo_campaign(delay: str | None = None) -> dict[str, Any]:
    """examples/campaigns/demo-welcome.yaml, with every step's delay replaced when given."""
    document = read_yaml(CAMPAIGN)
    if delay is not None:
        document["steps"] = [{**s, "delay": delay} if "delay" in s else s for s in document["steps"]]
    return document


def tracking_secret(directory: Path, tenant_id: str) -> str:
    """The tenant's Svix signing secret (whsec_<base64>), as the provider would show it."""
    return kept(
        directory / f"tracking-{tenant_id}.secret",
        lambda: "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(),
    )


def demo_connections(
    tenant_id: str, setup: DemoSetup = DemoSetup()
) -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    base = f"http://127.0.0.1:{setup.http_port}"
    smtp = {
        "host": "127.0.0.1",
        "port": setup.smtp_port,
        "security": "none",
        "from": sender(tenant_id),
        # campaign mail carries List-Unsubscribe: one-click POSTs go to the demo's conveyor serve
        "unsubscribe_url": setup.serve_url,
    }
    return [
        ("demo-smtp", "smtp", smtp, {}),
        ("demo-slack", "slack", {}, {"webhook_url": f"{base}/slack/T000/B000/demo"}),
        ("demo-discord", "discord", {}, {"webhook_url": f"{base}/discord/api/webhooks/1/demo"}),
        (
            "demo-sms",
            "twilio",
            {"account_sid": "ACdemo", "base_url": f"{base}/twilio", "from": "+15550100"},
            {"auth_token": "demo-token"},
        ),
        ("demo-sink", "webhook", {"url": f"{base}/reports"}, {"signing_secret": "demo-signing-secret"}),
        ("demo-payments", "webhook", {"url": f"{base}/payments/retry"}, {}),
    ]


# --- local sinks -----------------------------------------------------------------------


class _SinkHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    sink_file: Path

    def _record(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode(errors="replace") if length else ""
        entry = {
            "at": datetime.now(UTC).isoformat(),
            "method": self.command,
            "path": self.path,
            "idempotency_key": self.headers.get("Idempotency-Key"),
            "body": body,
        }
        with self.sink_file.open("a") as sink:
            sink.write(json.dumps(entry) + "\n")
        if "/twilio/" in self.path:
            answer = json.dumps({"sid": "SM" + secrets.token_hex(16), "status": "queued"}).encode()
            self.send_response(201)
        else:
            answer = b'{"ok": true}'
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET = _record

    def log_message(self, format: str, *args: Any) -> None:
        return


class _OutboxHandler:
    def __init__(self, outbox: Path, on_message: Callable[[EmailMessage], None] | None) -> None:
        self.outbox = outbox
        self.on_message = on_message

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        message = message_from_bytes(content, policy=default_policy)
        name = f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{secrets.token_hex(3)}.eml"
        (self.outbox / name).write_bytes(content)
        log.info(
            "email delivered to the outbox",
            extra={"to": message.get("To"), "subject": message.get("Subject"), "file": name},
        )
        if self.on_message is not None and isinstance(message, EmailMessage):
            self.on_message(message)
        return "250 Message accepted for delivery"


@contextlib.contextmanager
def sinks(
    setup: DemoSetup = DemoSetup(), on_message: Callable[[EmailMessage], None] | None = None
) -> Iterator[Path]:
    """Run the HTTP sink and the SMTP outbox until the block ends; `on_message` sees each
    message the outbox takes (the simulated provider)."""
    outbox = setup.directory / "outbox"
    outbox.mkdir(parents=True, exist_ok=True)
    handler = type("SinkHandler", (_SinkHandler,), {"sink_file": setup.directory / "sink.jsonl"})
    http = ThreadingHTTPServer(("127.0.0.1", setup.http_port), handler)
    threading.Thread(target=http.serve_forever, name="demo-http-sink", daemon=True).start()
    smtp = Controller(_OutboxHandler(outbox, on_message), hostname="127.0.0.1", port=setup.smtp_port)
    smtp.start()
    try:
        yield setup.directory
    finally:
        smtp.stop()
        http.shutdown()
        http.server_close()


# --- activity ------------------------------------------------------------------------------

FIRST_NAMES = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Margaret", "Linus", "Radia", "Donald"]


def generate_activity(database_url: str, stop: threading.Event, every: float = 3.0) -> None:
    """Now and then: a new contact (which enroll-new-contacts enrolls in the welcome
    campaign), a deal won, an invoice whose payment fails, an appointment."""
    rng = random.Random()
    while not stop.wait(every):
        tenant = rng.choice(list(TENANTS))
        name = rng.choice(FIRST_NAMES)
        try:
            with psycopg.connect(database_url, autocommit=True) as conn:
                contact = new_contact(conn, tenant, name, rng)
                action = rng.choice(["deal", "invoice", "appointment", "none"])
                if action == "deal":
                    deal = conn.execute(
                        "insert into demo.deals (tenant_id, contact_id, title, amount) values (%s, %s, %s, %s)"
                        " returning id",
                        (tenant, contact, f"{name}'s order", rng.choice([800, 4500, 12000])),
                    ).fetchone()
                    assert deal is not None
                    conn.execute(
                        "update demo.deals set stage = 'won', updated_at = now() where id = %s", (deal[0],)
                    )
                elif action == "invoice":
                    invoice = conn.execute(
                        "insert into demo.invoices (tenant_id, contact_id, number, amount, due_date)"
                        " values (%s, %s, %s, %s, %s) returning id",
                        (
                            tenant,
                            contact,
                            f"INV-{rng.randint(1000, 9999)}",
                            rng.choice([99, 250, 1200]),
                            (datetime.now(UTC) + timedelta(days=14)).date(),
                        ),
                    ).fetchone()
                    assert invoice is not None
                    conn.execute("update demo.invoices set payment_failures = 1 where id = %s", (invoice[0],))
                elif action == "appointment":
                    conn.execute(
                        "insert into demo.appointments (tenant_id, contact_id, title, starts_at)"
                        " values (%s, %s, 'Consultation', now() + interval '2 days')",
                        (tenant, contact),
                    )
            log.info("demo activity", extra={"tenant": tenant, "contact": name, "also": action})
        except psycopg.Error as exc:
            log.warning("demo activity failed", extra={"error": str(exc).strip().splitlines()[0]})


def new_contact(conn: psycopg.Connection[Any], tenant: str, name: str, rng: random.Random) -> int:
    """A sign-up on the demo platform: the contact's row (whose event enroll-new-contacts
    turns into an enrollment in the welcome campaign)."""
    row = conn.execute(
        "insert into demo.contacts (tenant_id, first_name, email, type, timezone, last_active_at)"
        " values (%s, %s, %s, %s, %s, now()) returning id",
        (
            tenant,
            name,
            f"{name.lower()}.{rng.randint(1, 9999)}@example.com",
            rng.choice(["lead", "lead", "customer"]),
            TENANTS[tenant][1],
        ),
    ).fetchone()
    assert row is not None
    return int(row[0])
