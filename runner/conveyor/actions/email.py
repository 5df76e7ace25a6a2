"""email.send over SMTP (server and credentials from an smtp connection).

connection config: host, port, security (starttls | tls | none; default starttls),
username, from (default sender address), timeout_s; secret: password.
input: {"to", "cc", "bcc" (string or list), "subject", "text", "html", "from_name",
"from" (overrides config.from), "reply_to", "tags" (recorded by the write-back, not sent),
"list_unsubscribe" (true: RFC 8058 one-click unsubscribe headers; needs config.unsubscribe_url,
the public address of `conveyor serve`, and takes config.unsubscribe_mailto)}.
output: {"message_id", "accepted": [...], "refused": {...}, "smtp_reply" (the server's answer to
DATA), "provider_message_id"? (the id a provider gives the message in that answer: "queued as
<id>", "Ok <id>", "id=<id>"; delivery tracking matches provider webhooks by it),
"unsubscribe_token"?}.

The SMTP connection goes through the same SSRF check as HTTP: the host is resolved once,
every address checked, and the socket opened to the checked address (TLS still verifies
the certificate against the configured host name).
"""

from __future__ import annotations

import re
import secrets
import smtplib
import socket
import ssl
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid
from typing import Any

from conveyor.actions.base import ActionError, ActionRequest, Environment, InvalidInput, text_field
from conveyor.netguard import BlockedAddress, NetworkPolicy, ResolveError, connect_checked

DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}


class _DataReply:
    """Keeps the server's answer to DATA: sendmail drops it, and providers put their id
    for the message there ("250 2.0.0 Ok: queued as 4Xk2...")."""

    data_reply: tuple[int, bytes] | None = None

    def data(self, msg: Any) -> tuple[int, bytes]:
        reply: tuple[int, bytes] = super().data(msg)  # type: ignore[misc]
        self.data_reply = reply
        return reply


class _CheckedSMTP(_DataReply, smtplib.SMTP):
    policy_: NetworkPolicy
    _host: str  # the TLS server name (smtplib sets it only when its constructor connects)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return connect_checked(self.policy_, host, port, timeout)


class _CheckedSMTPSSL(_DataReply, smtplib.SMTP_SSL):
    policy_: NetworkPolicy
    _host: str

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = connect_checked(self.policy_, host, port, timeout)
        return self.context.wrap_socket(sock, server_hostname=self._host)


# "queued as <id>" (Postfix, SendGrid and most MTAs), "Ok <id>" (Amazon SES), "id=<id>"
_PROVIDER_ID = re.compile(
    r"(?:queued as|^(?:\d\.\d\.\d\s+)?ok:?|\bid=)\s*<?([A-Za-z0-9][A-Za-z0-9._@+-]{5,199})>?\s*$",
    re.IGNORECASE,
)


def provider_message_id(reply: str) -> str | None:
    """The provider's id for the message in its answer to DATA, if it gives one."""
    match = _PROVIDER_ID.search(reply.strip()[:300])
    return match.group(1) if match else None


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _addresses(data: dict[str, Any], name: str) -> list[str]:
    value = data.get(name)
    if value is None or value == "" or value == []:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) and i.strip() for i in items):
        raise InvalidInput(f"input.{name} must be an address or a list of addresses")
    for item in items:
        if "\r" in item or "\n" in item or "@" not in item:
            raise InvalidInput(f"input.{name}: {item!r} is not an email address")
    return [i.strip() for i in items]


def unsubscribe_headers(config: dict[str, Any], token: str) -> dict[str, str]:
    """RFC 8058 one-click unsubscribe: the POST URL `conveyor serve` answers, and a mailto."""
    base = str(config.get("unsubscribe_url") or "").rstrip("/")
    if not base.startswith(("https://", "http://")) or any(c in base for c in "\r\n<>, "):
        raise InvalidInput(
            "input.list_unsubscribe needs config.unsubscribe_url on the smtp connection "
            "(the public https:// address of `conveyor serve`)"
        )
    targets = [f"<{base}/u/{token}>"]
    mailto = config.get("unsubscribe_mailto")
    if mailto:
        if not isinstance(mailto, str) or "@" not in mailto or any(c in mailto for c in "\r\n<>, ?"):
            raise InvalidInput("config.unsubscribe_mailto: expected an email address")
        targets.append(f"<mailto:{mailto}?subject=unsubscribe>")
    return {"List-Unsubscribe": ", ".join(targets), "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}


def build_message(request: ActionRequest, sender: str, extra: dict[str, str] | None = None) -> EmailMessage:
    data = request.input
    to, cc, bcc = _addresses(data, "to"), _addresses(data, "cc"), _addresses(data, "bcc")
    if not (to or cc or bcc):
        raise InvalidInput("input.to is required")
    subject = text_field(data, "subject", required=True) or ""
    text, html = text_field(data, "text"), text_field(data, "html")
    if text is None and html is None:
        raise InvalidInput("input.text or input.html is required")
    from_name = text_field(data, "from_name")
    message = EmailMessage()
    try:
        message["From"] = formataddr((from_name, sender)) if from_name else sender
        if to:
            message["To"] = ", ".join(to)
        if cc:
            message["Cc"] = ", ".join(cc)
        message["Subject"] = subject
        reply_to = text_field(data, "reply_to")
        if reply_to:
            message["Reply-To"] = reply_to
    except (ValueError, IndexError) as exc:
        raise InvalidInput(f"invalid header: {exc}") from exc
    # RFC 5322 requires Date (spam filters penalise its absence); smtplib adds neither header.
    message["Date"] = formatdate(usegmt=True)
    domain = sender.rsplit("@", 1)[-1] or None
    message["Message-ID"] = make_msgid(domain=domain)
    message["X-Conveyor-Idempotency-Key"] = request.idempotency_key
    for name, value in (extra or {}).items():
        message[name] = value
    if text is not None:
        message.set_content(text)
        if html is not None:
            message.add_alternative(html, subtype="html")
    else:
        message.set_content(html or "", subtype="html")
    return message


def send(request: ActionRequest, env: Environment) -> dict[str, Any]:
    connection = request.require_connection("smtp")
    config = connection.config
    sender = text_field(request.input, "from") or config.get("from") or config.get("username")
    if not sender or "@" not in str(sender):
        raise InvalidInput("input.from is required (or config.from on the smtp connection)")
    try:
        Address(addr_spec=str(sender))
    except (ValueError, IndexError) as exc:
        raise InvalidInput(f"input.from: {sender!r} is not an email address") from exc
    # a random 256-bit token per message: the write-back records it with the message
    token = secrets.token_urlsafe(32) if request.input.get("list_unsubscribe") is True else None
    message = build_message(request, str(sender), unsubscribe_headers(config, token) if token else None)
    recipients = (
        _addresses(request.input, "to") + _addresses(request.input, "cc") + _addresses(request.input, "bcc")
    )

    security = str(config.get("security", "starttls"))
    host = str(config["host"])
    port = int(config.get("port") or DEFAULT_PORTS[security])
    timeout = float(request.timeout_s)
    smtp: _CheckedSMTP | _CheckedSMTPSSL
    try:
        if security == "tls":
            smtp = _CheckedSMTPSSL(timeout=timeout, context=env.tls_context(alpn=None))
        else:
            smtp = _CheckedSMTP(timeout=timeout)
        smtp.policy_ = env.policy
        smtp._host = host
        smtp.connect(host, port)
        try:
            smtp.ehlo()
            if security == "starttls":
                smtp.starttls(context=env.tls_context(alpn=None))
                smtp.ehlo()
            if config.get("username"):
                smtp.login(str(config["username"]), str(connection.secret.get("password", "")))
            refused = smtp.send_message(message, from_addr=str(sender), to_addrs=recipients)
        finally:
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                smtp.close()
    except BlockedAddress as exc:
        raise ActionError(str(exc), retryable=False, kind="blocked_address") from exc
    except ResolveError as exc:
        raise ActionError(str(exc), retryable=True, kind="dns") from exc
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        raise ActionError(
            "every recipient was refused",
            retryable=all(400 <= c < 500 for c in codes),
            kind="smtp_refused",
            details={"refused": {k: [c, _text(m)] for k, (c, m) in exc.recipients.items()}},
        ) from exc
    except smtplib.SMTPResponseException as exc:
        raise ActionError(
            f"the SMTP server answered {exc.smtp_code}: {_text(exc.smtp_error)}",
            retryable=400 <= exc.smtp_code < 500,
            kind="smtp_status",
            details={"code": exc.smtp_code},
        ) from exc
    except smtplib.SMTPNotSupportedError as exc:
        raise ActionError(f"SMTP: {exc}", retryable=False, kind="smtp_unsupported") from exc
    except ssl.SSLCertVerificationError as exc:
        raise ActionError(f"SMTP TLS: {exc}", retryable=False, kind="tls") from exc
    except TimeoutError as exc:
        raise ActionError(f"SMTP {host}:{port} timed out", retryable=True, kind="timeout") from exc
    except (smtplib.SMTPException, OSError) as exc:
        raise ActionError(f"SMTP {host}:{port} failed: {exc}", retryable=True, kind="connection") from exc
    output: dict[str, Any] = {
        "message_id": message["Message-ID"],
        "accepted": [r for r in recipients if r not in refused],
        "refused": {k: [c, _text(m)] for k, (c, m) in refused.items()},
    }
    if smtp.data_reply is not None:
        # what the server said it did with the message, and the id it gave it
        reply = _text(smtp.data_reply[1])[:300]
        output["smtp_reply"] = f"{smtp.data_reply[0]} {reply}"
        provider_id = provider_message_id(reply)
        if provider_id:
            output["provider_message_id"] = provider_id
    if token:
        output["unsubscribe_token"] = token
    return output
