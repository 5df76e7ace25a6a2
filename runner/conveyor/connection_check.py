"""`conveyor connections test`: does a connection decrypt and is its endpoint reachable?

Nothing is sent: SMTP connects, negotiates TLS and logs in; the SMS provider is asked
for the account; webhook-style connections get a TCP connection to their host. Every
check goes through the SSRF policy, and errors are redacted like action errors.
"""

from __future__ import annotations

import smtplib
import ssl
from urllib.parse import quote, urlsplit

from conveyor.actions import http
from conveyor.actions.base import ActionError, Environment
from conveyor.actions.email import DEFAULT_PORTS, _CheckedSMTP, _CheckedSMTPSSL
from conveyor.actions.sms import DEFAULT_BASE_URL
from conveyor.connections import Connection
from conveyor.errors import ConveyorError
from conveyor.netguard import BlockedAddress, NetworkPolicy, ResolveError, connect_checked

TIMEOUT_S = 10.0


def check(connection: Connection, policy: NetworkPolicy) -> str:
    """A one-line success description; raises ConveyorError (redacted) on failure."""
    try:
        return _check(connection, policy)
    except ActionError as exc:
        raise ConveyorError(connection.redactor.text(f"{connection.name}: {exc.message}")) from None
    except (BlockedAddress, ResolveError, OSError, smtplib.SMTPException) as exc:
        raise ConveyorError(connection.redactor.text(f"{connection.name}: {exc}")) from None


def _tcp(policy: NetworkPolicy, url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConveyorError("the connection's URL is not an http(s) URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    connect_checked(policy, parts.hostname, port, TIMEOUT_S).close()
    return f"ok: {parts.hostname}:{port} is reachable"


def _check(connection: Connection, policy: NetworkPolicy) -> str:
    config, secret = connection.config, connection.secret
    if connection.kind == "smtp":
        security = str(config.get("security", "starttls"))
        host, port = str(config["host"]), int(config.get("port") or DEFAULT_PORTS[security])
        context = ssl.create_default_context()
        smtp: _CheckedSMTP | _CheckedSMTPSSL = (
            _CheckedSMTPSSL(timeout=TIMEOUT_S, context=context)
            if security == "tls"
            else _CheckedSMTP(timeout=TIMEOUT_S)
        )
        smtp.policy_ = policy
        smtp._host = host
        smtp.connect(host, port)
        try:
            smtp.ehlo()
            if security == "starttls":
                smtp.starttls(context=context)
                smtp.ehlo()
            if config.get("username"):
                smtp.login(str(config["username"]), str(secret.get("password", "")))
        finally:
            smtp.quit()
        return f"ok: {host}:{port} accepted the connection" + (" and login" if config.get("username") else "")
    if connection.kind == "twilio":
        env = Environment.create(policy)
        try:
            sid = str(config["account_sid"])
            base = str(config.get("base_url") or DEFAULT_BASE_URL).rstrip("/")
            http.send(
                env,
                "GET",
                f"{base}/2010-04-01/Accounts/{quote(sid, safe='')}.json",
                timeout_s=TIMEOUT_S,
                auth=(sid, str(secret["auth_token"])),
                credentials=connection,
            )
        finally:
            env.close()
        return "ok: the SMS provider accepted the credentials"
    if connection.kind in ("slack", "discord"):
        return _tcp(policy, str(secret["webhook_url"]))
    if config.get("url"):
        return _tcp(policy, str(config["url"]))
    return "ok: the secret decrypts (no default URL to reach)"
