"""The `make run` demo: a small platform, two tenants, eight workflows, local sinks, activity.

Everything stays on this machine: emails land as .eml files in `.conveyor/demo/outbox/`
(a local SMTP server), webhooks, Slack, Discord and SMS requests are appended to
`.conveyor/demo/sink.jsonl` (a local HTTP server that also answers like Twilio's API).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import secrets
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
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
TENANTS = {"acme": ("Acme Corp", "Europe/Berlin"), "globex": ("Globex Inc", "America/New_York")}


def demo_environment() -> dict[str, str]:
    """The settings the demo runner needs: a secret key (kept in .conveyor/demo) and the
    loopback allowlist (the sinks live on 127.0.0.1)."""
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    key_file = DEMO_DIR / "secret.key"
    if not key_file.exists():
        key_file.write_text(generate_key() + "\n")
        key_file.chmod(0o600)
    return {
        "CONVEYOR_SECRET_KEY": os.environ.get("CONVEYOR_SECRET_KEY") or key_file.read_text().strip(),
        "CONVEYOR_ALLOW_PRIVATE_NETWORKS": os.environ.get("CONVEYOR_ALLOW_PRIVATE_NETWORKS")
        or "127.0.0.1/32",
    }


def load(database_url: str) -> list[str]:
    """Create the demo platform, tenants, connections and workflows (idempotent)."""
    import yaml

    env = demo_environment()
    box = SecretBox(env["CONVEYOR_SECRET_KEY"])
    published = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute((EXAMPLES / "platform.sql").read_text().encode())
        for tenant_id, (name, zone) in TENANTS.items():
            conn.execute(
                "insert into conveyor.tenants (tenant_id, name, timezone) values (%s, %s, %s)"
                " on conflict (tenant_id) do nothing",
                (tenant_id, name, zone),
            )
            for conn_name, kind, config, secret in demo_connections():
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
                document = json.loads(json.dumps(yaml.safe_load(path.read_text()), default=str))
                row = conn.execute(
                    "select workflow_id, version from conveyor.publish(%s, %s)", (tenant_id, Jsonb(document))
                ).fetchone()
                published.append(f"{tenant_id}/{document['slug']} v{row[1] if row else '?'}")
    return published


def demo_connections() -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    base = f"http://127.0.0.1:{HTTP_PORT}"
    return [
        (
            "demo-smtp",
            "smtp",
            {"host": "127.0.0.1", "port": SMTP_PORT, "security": "none", "from": "automations@demo.example"},
            {},
        ),
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
    def __init__(self, outbox: Path) -> None:
        self.outbox = outbox

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        message = message_from_bytes(content, policy=default_policy)
        name = f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{secrets.token_hex(3)}.eml"
        (self.outbox / name).write_bytes(content)
        log.info(
            "email delivered to the outbox",
            extra={"to": message.get("To"), "subject": message.get("Subject"), "file": name},
        )
        return "250 Message accepted for delivery"


@contextlib.contextmanager
def sinks() -> Iterator[Path]:
    """Run the HTTP sink and the SMTP outbox until the block ends."""
    outbox = DEMO_DIR / "outbox"
    outbox.mkdir(parents=True, exist_ok=True)
    handler = type("SinkHandler", (_SinkHandler,), {"sink_file": DEMO_DIR / "sink.jsonl"})
    http = ThreadingHTTPServer(("127.0.0.1", HTTP_PORT), handler)
    threading.Thread(target=http.serve_forever, name="demo-http-sink", daemon=True).start()
    smtp = Controller(_OutboxHandler(outbox), hostname="127.0.0.1", port=SMTP_PORT)
    smtp.start()
    try:
        yield DEMO_DIR
    finally:
        smtp.stop()
        http.shutdown()
        http.server_close()


# --- activity ------------------------------------------------------------------------------

FIRST_NAMES = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Margaret", "Linus", "Radia", "Donald"]


def generate_activity(database_url: str, stop: threading.Event, every: float = 3.0) -> None:
    """Now and then: a new lead, a deal won, an invoice whose payment fails, an appointment."""
    rng = random.Random()
    while not stop.wait(every):
        tenant = rng.choice(list(TENANTS))
        name = rng.choice(FIRST_NAMES)
        try:
            with psycopg.connect(database_url, autocommit=True) as conn:
                contact = conn.execute(
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
                assert contact is not None
                action = rng.choice(["deal", "invoice", "appointment", "none"])
                if action == "deal":
                    deal = conn.execute(
                        "insert into demo.deals (tenant_id, contact_id, title, amount) values (%s, %s, %s, %s)"
                        " returning id",
                        (tenant, contact[0], f"{name}'s order", rng.choice([800, 4500, 12000])),
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
                            contact[0],
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
                        (tenant, contact[0]),
                    )
            log.info("demo activity", extra={"tenant": tenant, "contact": name, "also": action})
        except psycopg.Error as exc:
            log.warning("demo activity failed", extra={"error": str(exc).strip().splitlines()[0]})
