"""email.send against a real SMTP server (aiosmtpd): envelope, headers, auth, STARTTLS,
implicit TLS, refusals classified, passwords never reported."""

from __future__ import annotations

import datetime
import email
import email.policy
import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from conveyor.actions import ActionRequest, Environment, Outcome, perform
from conveyor.connections import Connection
from conveyor.netguard import NetworkPolicy
from tests.conftest import free_port
from tests.runner.helpers import self_signed_certificate

PASSWORD = "smtp-pass-Zq8w7e6r"


@dataclass
class Mailbox:
    messages: list[dict[str, Any]] = field(default_factory=list)
    data_reply: str = "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address.startswith("nobody@"):
            return "550 5.1.1 no such user"
        if address.startswith("later@"):
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(
            {
                "mail_from": envelope.mail_from,
                "rcpt_tos": list(envelope.rcpt_tos),
                "message": email.message_from_bytes(envelope.content, policy=email.policy.default),
                "tls": session.ssl is not None,
                "authenticated": bool(session.authenticated),
            }
        )
        return self.data_reply


def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    if (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == b"mailer"
        and auth_data.password == PASSWORD.encode()
    ):
        return AuthResult(success=True)
    return AuthResult(success=False, handled=False)


@dataclass
class SmtpServer:
    mailbox: Mailbox
    port: int


def start(mailbox: Mailbox, **kwargs: Any) -> tuple[Controller, int]:
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    return controller, port


@pytest.fixture
def plain() -> Iterator[SmtpServer]:
    mailbox = Mailbox()
    controller, port = start(mailbox, authenticator=authenticator, auth_require_tls=False)
    yield SmtpServer(mailbox, port)
    controller.stop()


def smtp(port: int, **config: Any) -> Connection:
    secret = {"password": config.pop("password")} if "password" in config else {}
    return Connection(
        "acme",
        "mail",
        "smtp",
        {"host": "127.0.0.1", "port": port, "security": "none", "from": "crm@acme.test", **config},
        secret,
    )


def send(env: Environment, connection: Connection, **data: Any) -> Outcome:
    return perform(ActionRequest("email.send", data, "7:welcome:1", 10.0, connection, "acme"), env)


def test_email_is_delivered_with_headers_recipients_and_message_id(
    env: Environment, plain: SmtpServer
) -> None:
    outcome = send(
        env,
        smtp(plain.port),
        to=["ada@example.com", "bob@example.com"],
        cc="carol@example.com",
        bcc=["dave@example.com"],
        subject="Welcome, Ada",
        text="Hello Ada",
        html="<p>Hello <b>Ada</b></p>",
        from_name="Acme CRM",
        reply_to="sales@acme.test",
    )
    assert outcome.ok, outcome.error
    [received] = plain.mailbox.messages
    message = received["message"]
    assert received["mail_from"] == "crm@acme.test"
    assert received["rcpt_tos"] == [
        "ada@example.com",
        "bob@example.com",
        "carol@example.com",
        "dave@example.com",
    ]
    assert message["From"] == "Acme CRM <crm@acme.test>"
    assert message["To"] == "ada@example.com, bob@example.com"
    assert message["Cc"] == "carol@example.com"
    assert message["Bcc"] is None  # bcc recipients are in the envelope only
    assert message["Subject"] == "Welcome, Ada"
    assert message["Reply-To"] == "sales@acme.test"
    assert message["X-Conveyor-Idempotency-Key"] == "7:welcome:1"
    assert message.get_body(("plain",)).get_content().strip() == "Hello Ada"
    assert "<b>Ada</b>" in message.get_body(("html",)).get_content()
    assert outcome.output is not None
    assert outcome.output["message_id"] == message["Message-ID"]
    assert outcome.output["message_id"].endswith("@acme.test>")
    assert outcome.output["refused"] == {}


@pytest.mark.parametrize(
    ("reply", "provider_id"),
    [
        ("250 2.0.0 Ok: queued as 4XkQ2b1Zz9", "4XkQ2b1Zz9"),  # Postfix, SendGrid
        (
            "250 Ok 0100018c2f5d7e1a-5b3c9f00-aaaa-4d1b-9e2f-000000",
            "0100018c2f5d7e1a-5b3c9f00-aaaa-4d1b-9e2f-000000",
        ),
        ("250 OK id=1r9XyZ-0003Ab-Cd", "1r9XyZ-0003Ab-Cd"),  # Exim
        ("250 OK", None),
        ("250 Great success", None),
    ],
)
def test_the_providers_id_for_the_message_is_taken_from_its_answer_to_data(
    env: Environment, plain: SmtpServer, reply: str, provider_id: str | None
) -> None:
    plain.mailbox.data_reply = reply
    outcome = send(env, smtp(plain.port), to="ada@example.com", subject="Hi", text="Hi")
    assert outcome.ok and outcome.output is not None, outcome.error
    assert outcome.output["smtp_reply"] == reply
    assert outcome.output.get("provider_message_id") == provider_id


def test_every_message_has_an_rfc_5322_date_in_gmt_and_a_message_id(
    env: Environment, plain: SmtpServer
) -> None:
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    for text in ("first", "second"):
        assert send(env, smtp(plain.port), to="ada@example.com", subject="s", text=text).ok
    after = datetime.datetime.now(datetime.UTC)
    messages = [m["message"] for m in plain.mailbox.messages]
    for message in messages:
        sent_at = message["Date"].datetime  # the parser read it as an RFC 5322 date-time
        assert sent_at.utcoffset() == datetime.timedelta(0) and before <= sent_at <= after
        assert len(message.get_all("Date")) == 1 and len(message.get_all("Message-ID")) == 1
    assert messages[0]["Message-ID"] != messages[1]["Message-ID"]


def test_login_uses_the_connections_password_and_never_reports_it(
    env: Environment, plain: SmtpServer
) -> None:
    ok = send(
        env,
        smtp(plain.port, username="mailer", password=PASSWORD),
        to="ada@example.com",
        subject="s",
        text="t",
    )
    assert ok.ok, ok.error
    assert plain.mailbox.messages[0]["authenticated"] is True
    wrong = send(
        env,
        smtp(plain.port, username="mailer", password="not-the-password"),
        to="a@b.c",
        subject="s",
        text="t",
    )
    assert not wrong.ok and wrong.retryable is False
    assert wrong.error is not None and wrong.error["code"] == 535
    assert "not-the-password" not in json.dumps([wrong.output, wrong.error])


def test_a_refused_recipient_is_permanent_and_a_deferred_one_retryable(
    env: Environment, plain: SmtpServer
) -> None:
    refused = send(env, smtp(plain.port), to="nobody@example.com", subject="s", text="t")
    assert not refused.ok and refused.retryable is False
    deferred = send(env, smtp(plain.port), to="later@example.com", subject="s", text="t")
    assert not deferred.ok and deferred.retryable is True
    partial = send(env, smtp(plain.port), to=["ada@example.com", "nobody@example.com"], subject="s", text="t")
    assert partial.ok and partial.output is not None
    assert partial.output["accepted"] == ["ada@example.com"]
    assert list(partial.output["refused"]) == ["nobody@example.com"]
    assert plain.mailbox.messages[-1]["rcpt_tos"] == ["ada@example.com"]


def test_an_unreachable_server_is_retryable(env: Environment) -> None:
    outcome = send(env, smtp(free_port()), to="ada@example.com", subject="s", text="t")
    assert not outcome.ok and outcome.retryable is True


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"subject": "s", "text": "t"}, "input.to is required"),
        ({"to": "ada@example.com", "text": "t"}, "input.subject is required"),
        ({"to": "ada@example.com", "subject": "s"}, "input.text or input.html is required"),
        ({"to": "not-an-address", "subject": "s", "text": "t"}, "is not an email address"),
        ({"to": "a@b.c\r\nBcc: x@y.z", "subject": "s", "text": "t"}, "is not an email address"),
    ],
)
def test_invalid_email_input_is_permanent(
    env: Environment, plain: SmtpServer, data: dict[str, Any], message: str
) -> None:
    outcome = send(env, smtp(plain.port), **data)
    assert not outcome.ok and outcome.retryable is False
    assert outcome.error is not None and message in outcome.error["message"]
    assert plain.mailbox.messages == []


def test_smtp_to_a_private_address_is_refused_unless_allowlisted(plain: SmtpServer) -> None:
    environment = Environment.create(NetworkPolicy())
    try:
        outcome = send(
            environment, smtp(plain.port, host="localhost"), to="ada@example.com", subject="s", text="t"
        )
    finally:
        environment.close()
    assert not outcome.ok and outcome.retryable is False
    assert outcome.error is not None and outcome.error["type"] == "blocked_address"
    assert plain.mailbox.messages == []


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1 (its own CA)."""
    return self_signed_certificate(tmp_path, names=("localhost",), addresses=("127.0.0.1",))


def server_context(tls_files: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*tls_files)
    return context


def test_starttls_verifies_the_certificate_against_the_configured_host(
    env: Environment, tls_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    mailbox = Mailbox()
    controller, port = start(
        mailbox, tls_context=server_context(tls_files), require_starttls=True, authenticator=authenticator
    )
    try:
        untrusted = send(
            env,
            smtp(port, host="localhost", security="starttls"),
            to="ada@example.com",
            subject="s",
            text="t",
        )
        assert not untrusted.ok and untrusted.retryable is False
        assert untrusted.error is not None and untrusted.error["type"] == "tls"
        # trust our test CA: a runner reads the trust store once, when it first needs it
        monkeypatch.setenv("SSL_CERT_FILE", str(tls_files[0]))
        trusted = send(
            Environment.create(env.policy),
            smtp(port, host="localhost", security="starttls", username="mailer", password=PASSWORD),
            to="ada@example.com",
            subject="over tls",
            text="t",
        )
        assert trusted.ok, trusted.error
    finally:
        controller.stop()
    [received] = mailbox.messages
    assert received["tls"] is True and received["authenticated"] is True
    assert received["message"]["Subject"] == "over tls"


def test_the_tls_context_is_made_once_per_runner_and_not_for_plain_smtp(
    env: Environment, plain: SmtpServer
) -> None:
    # loading the CA certificates cost ~30 ms a send, more than all the rest of it
    assert send(env, smtp(plain.port), to="a@example.com", subject="s", text="t").ok
    assert send(env, smtp(plain.port), to="b@example.com", subject="s", text="t").ok
    smtp_context = env.tls_context(alpn=None)
    assert env.tls_context(alpn=None) is smtp_context
    assert env.tls_context() is not smtp_context  # https keeps its own, with ALPN http/1.1


def test_implicit_tls(
    env: Environment, tls_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    mailbox = Mailbox()
    controller, port = start(mailbox, ssl_context=server_context(tls_files))
    try:
        untrusted = send(
            env, smtp(port, host="localhost", security="tls"), to="ada@example.com", subject="s", text="t"
        )
        monkeypatch.setenv("SSL_CERT_FILE", str(tls_files[0]))
        trusted = send(
            Environment.create(env.policy),
            smtp(port, host="localhost", security="tls"),
            to="ada@example.com",
            subject="s",
            text="t",
        )
    finally:
        controller.stop()
    assert not untrusted.ok and untrusted.error is not None and untrusted.error["type"] == "tls"
    assert trusted.ok, trusted.error
    assert len(mailbox.messages) == 1


def test_list_unsubscribe_adds_one_click_headers_with_a_fresh_token_per_message(
    env: Environment, plain: SmtpServer
) -> None:
    connection = smtp(
        plain.port, unsubscribe_url="https://hooks.acme.test/", unsubscribe_mailto="u@acme.test"
    )
    outputs = [
        send(env, connection, to="ada@example.com", subject="s", text="t", list_unsubscribe=True).output
        for _ in range(2)
    ]
    assert send(env, connection, to="ada@example.com", subject="s", text="t", tags={"a": "b"}).ok
    tokens = [o["unsubscribe_token"] for o in outputs if o]
    assert len(set(tokens)) == 2 and all(len(t) >= 43 for t in tokens)
    first, _, plain_message = [m["message"] for m in plain.mailbox.messages]
    assert str(first["List-Unsubscribe"]).strip() == (  # folded (RFC 5322) before the long URL
        f"<https://hooks.acme.test/u/{tokens[0]}>, <mailto:u@acme.test?subject=unsubscribe>"
    )
    assert first["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert plain_message["List-Unsubscribe"] is None and plain_message["X-Tags"] is None


def test_list_unsubscribe_without_an_unsubscribe_url_is_refused_permanently(
    env: Environment, plain: SmtpServer
) -> None:
    outcome = send(env, smtp(plain.port), to="ada@example.com", subject="s", text="t", list_unsubscribe=True)
    assert not outcome.ok and outcome.retryable is False
    assert outcome.error is not None and "config.unsubscribe_url" in outcome.error["message"]
    assert plain.mailbox.messages == []
