"""The demo's simulated email provider: what happens to the mail after the outbox took it.

A real provider (Resend, Mailgun) reports each message's fate to the platform's tracking
webhook; this one does the same for every message that lands in the demo's outbox, over the
real HTTP endpoints of the demo's `conveyor serve` (docs/email-tracking.md):

* `email.delivered` for most, `email.bounced` (permanent) now and then, as Svix-signed
  `POST /email/hooks/<token>` requests (Resend's format), with the message's Message-ID;
* then `email.opened` for some, `email.clicked` for some of those;
* sometimes a reply: the contact writes back (the .eml lands in `.conveyor/demo/inbox/`) and
  a Mailgun inbound route forwards it, a signed form with its In-Reply-To, to
  `POST /email/inbound/<token>` (Resend's webhooks carry no replies);
* rarely a one-click unsubscribe: `POST` to the message's `List-Unsubscribe` URL.

Each message's fate is drawn once from seeded odds (`Odds`), and a second event is posted
only after the first was recorded: an event that arrives before the runner wrote the send
back (202 `unmatched`) is retried a few times, as a provider retries. Every simulated event
is logged (`simulated provider: <kind>`).
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import itertools
import json
import logging
import random
import re
import secrets
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from pathlib import Path
from typing import Any

log = logging.getLogger("conveyor.demo.provider")

# Nothing leaves the machine: no proxy from the environment for loopback requests.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
RETRIES = 10
RETRY_AFTER_S = 1.0


@dataclass(frozen=True)
class Odds:
    """How often each fate is drawn, per message (open and unsubscribe of delivered mail,
    click of opened mail, reply of delivered mail)."""

    bounce: float = 0.05
    open: float = 0.6
    click: float = 0.3
    reply: float = 0.12
    unsubscribe: float = 0.03


@dataclass(frozen=True)
class Fate:
    """What the provider will report for one message, in this order."""

    bounced: bool = False
    opened: bool = False
    clicked: bool = False
    replied: bool = False
    unsubscribed: bool = False


def draw(rng: random.Random, odds: Odds) -> Fate:
    if rng.random() < odds.bounce:
        return Fate(bounced=True)
    opened = rng.random() < odds.open
    return Fate(
        opened=opened,
        clicked=opened and rng.random() < odds.click,
        replied=rng.random() < odds.reply,
        unsubscribed=rng.random() < odds.unsubscribe,
    )


@dataclass(frozen=True)
class Account:
    """One tenant's accounts at the providers: the tracking webhook (Svix) and the inbound
    route (Mailgun), each with its signing secret."""

    tenant: str
    webhook_url: str
    secret: str
    inbound_url: str
    inbound_key: str


def read_accounts(path: Path) -> dict[str, Account]:
    """provider.json, written by `conveyor demo load`: sender domain → account."""
    return {domain: Account(**fields) for domain, fields in json.loads(path.read_text()).items()}


def mailgun_signed(key: str, timestamp: int | None = None) -> dict[str, str]:
    """Mailgun's signature fields: hex HMAC-SHA256(signing key, timestamp || token), a new
    token each time (a signature is accepted once)."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    token = secrets.token_hex(25)
    signature = hmac.new(key.encode(), (stamp + token).encode(), hashlib.sha256).hexdigest()
    return {"timestamp": stamp, "token": token, "signature": signature}


def svix_headers(secret: str, event_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """Svix's signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>"> keyed with the
    base64 part of whsec_<base64>."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = hmac.new(key, f"{event_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    return {
        "svix-id": event_id,
        "svix-timestamp": stamp,
        "svix-signature": "v1," + base64.b64encode(signed).decode(),
        "content-type": "application/json",
    }


@dataclass
class _Mail:
    account: Account
    message_id: str
    email_id: str
    sender: str
    to: str
    subject: str
    unsubscribe_url: str | None
    fate: Fate
    steps: list[str] = field(default_factory=list)
    reply: EmailMessage | None = None


class SimulatedProvider:
    """Feed it the outbox's messages (`offer`); a thread posts their events as they fall due.

    `pace` scales the waits between events (1.0: a few seconds each, as a person reads the
    log; retries wait a second whatever the pace);
    `fate` decides a message's events (default: drawn from `odds` with a seeded generator).
    """

    def __init__(
        self,
        accounts: dict[str, Account],
        inbox: Path,
        *,
        odds: Odds = Odds(),
        seed: int | None = 7,
        pace: float = 1.0,
        fate: Callable[[EmailMessage], Fate] | None = None,
    ) -> None:
        self.accounts = accounts
        self.inbox = inbox
        self.pace = pace
        self._rng = random.Random(seed)
        self._fate = fate or (lambda _message: draw(self._rng, odds))
        self._due: list[tuple[float, int, _Mail, str, int]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-provider", daemon=True)
        self.reported: list[tuple[str, str, str]] = []  # (message_id, kind, outcome), for tests

    # --- feeding and scheduling -------------------------------------------------------

    def offer(self, message: EmailMessage) -> None:
        """A message the outbox took: draw its fate and schedule its first event."""
        domain = parseaddr(str(message.get("From", "")))[1].rpartition("@")[2].lower()
        account = self.accounts.get(domain)
        message_id = str(message.get("Message-ID", "")).strip()
        if account is None or not message_id:
            return
        link = re.search(r"<(https?://[^>]+)>", str(message.get("List-Unsubscribe", "")))
        mail = _Mail(
            account=account,
            message_id=message_id,
            email_id=str(uuid.uuid4()),
            sender=parseaddr(str(message.get("From", "")))[1],
            to=parseaddr(str(message.get("To", "")))[1],
            subject=str(message.get("Subject", "")),
            unsubscribe_url=link.group(1) if link else None,
            fate=self._fate(message),
        )
        fate = mail.fate
        mail.steps = ["bounced"] if fate.bounced else ["delivered"]
        mail.steps += [k for k in ("opened", "clicked", "replied", "unsubscribed") if getattr(fate, k)]
        if mail.unsubscribe_url is None and "unsubscribed" in mail.steps:
            mail.steps.remove("unsubscribed")  # transactional mail has no unsubscribe link
        self._schedule(mail, self._rng.uniform(1, 3) * self.pace, attempt=0)

    def _schedule(self, mail: _Mail, after: float, attempt: int) -> None:
        with self._wake:
            step = mail.steps[0]
            heapq.heappush(self._due, (time.monotonic() + after, next(self._order), mail, step, attempt))
            self._wake.notify()

    def start(self) -> SimulatedProvider:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._wake:
            self._wake.notify()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._wake:
                wait = self._due[0][0] - time.monotonic() if self._due else 1.0
                if wait > 0:
                    self._wake.wait(min(wait, 1.0))
                    continue
                _, _, mail, step, attempt = heapq.heappop(self._due)
            try:
                outcome = self._perform(mail, step)
            except OSError as exc:  # serve not up (yet)
                outcome = "failed: " + (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            self.reported.append((mail.message_id, step, outcome))
            if outcome in ("recorded", "duplicate", "unsubscribed"):
                log.info(
                    f"simulated provider: {step}",
                    extra={"tenant": mail.account.tenant, "to": mail.to, "subject": mail.subject},
                )
                mail.steps.pop(0)
                if mail.steps:
                    self._schedule(mail, self._rng.uniform(2, 8) * self.pace, attempt=0)
            elif attempt < RETRIES:
                self._schedule(mail, RETRY_AFTER_S, attempt + 1)  # not written back yet: retry
            else:
                log.warning(
                    f"simulated provider: gave up on {step}",
                    extra={"tenant": mail.account.tenant, "to": mail.to, "outcome": outcome},
                )

    # --- the events ------------------------------------------------------------------------

    def _perform(self, mail: _Mail, step: str) -> str:
        if step == "replied":
            return self._reply(mail)
        if step == "unsubscribed":
            return self._unsubscribe(mail)
        return self._webhook(mail, step)

    def _webhook(self, mail: _Mail, kind: str) -> str:
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        data: dict[str, Any] = {
            "email_id": mail.email_id,
            "created_at": now,
            "from": mail.sender,
            "to": [mail.to],
            "subject": mail.subject,
            "headers": [{"name": "Message-ID", "value": mail.message_id}],
        }
        if kind == "clicked":
            data["click"] = {"link": "https://demo.example/getting-started", "timestamp": now}
        if kind == "bounced":
            data["bounce"] = {
                "type": "Permanent",
                "message": "550 5.1.1 the mailbox does not exist (simulated)",
            }
        body = json.dumps({"type": f"email.{kind}", "created_at": now, "data": data}).encode()
        headers = svix_headers(mail.account.secret, "msg_" + secrets.token_hex(12), body)
        status, answer = _post(mail.account.webhook_url, body, headers)
        if status == 200 and answer.get("status") in ("recorded", "duplicate"):
            return str(answer["status"])
        return f"{status} {answer.get('status') or answer.get('error') or ''}".strip()

    def _reply(self, mail: _Mail) -> str:
        """The contact writes back; the inbound route forwards the reply as Mailgun does."""
        if mail.reply is None:
            mail.reply = reply = EmailMessage()
            reply["From"], reply["To"] = mail.to, mail.sender
            reply["Subject"] = "Re: " + mail.subject
            reply["Date"] = formatdate(usegmt=True)
            reply["Message-ID"] = make_msgid(domain="example.com")
            reply["In-Reply-To"] = reply["References"] = mail.message_id
            reply.set_content("Thanks! One question: where do I start? (a simulated reply)")
        reply = mail.reply
        fields = {
            "from": mail.to,
            "recipient": mail.sender,
            "subject": str(reply["Subject"]),
            "Message-Id": str(reply["Message-ID"]),
            "In-Reply-To": str(reply["In-Reply-To"]),
            "References": str(reply["References"]),
            "body-plain": reply.get_content(),
            **mailgun_signed(mail.account.inbound_key),
        }
        status, answer = _post(
            mail.account.inbound_url,
            urllib.parse.urlencode(fields).encode(),
            {"content-type": "application/x-www-form-urlencoded"},
        )
        outcome = (
            str(answer.get("status")) if status == 200 else f"{status} {answer.get('status') or ''}".strip()
        )
        if outcome in ("recorded", "duplicate"):
            self.inbox.mkdir(parents=True, exist_ok=True)
            (self.inbox / f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}-reply.eml").write_bytes(bytes(reply))
        return outcome

    def _unsubscribe(self, mail: _Mail) -> str:
        """The mail client's RFC 8058 one-click POST to the List-Unsubscribe URL."""
        assert mail.unsubscribe_url is not None
        status, _ = _post(
            mail.unsubscribe_url,
            b"List-Unsubscribe=One-Click",
            {"content-type": "application/x-www-form-urlencoded"},
        )
        return "unsubscribed" if status == 200 else str(status)


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with _OPENER.open(request, timeout=10) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = {}
    return status, answer if isinstance(answer, dict) else {}
