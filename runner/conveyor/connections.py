"""Connections: named, per-tenant endpoints and credentials that actions use.

Rows live in `conveyor.connections` (migrations/0006): `config` (not secret) in clear,
`secret` (a JSON object) encrypted with `SecretBox`. Each kind names the fields it
needs; `validate` checks them when a connection is added, so a bad connection fails
at `conveyor connections add`, not at 3 a.m. in a workflow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg.rows import dict_row, tuple_row
from psycopg.types.json import Jsonb

from conveyor import netguard
from conveyor.errors import ConveyorError
from conveyor.secrets import Redactor, SecretBox, secret_forms

Origin = tuple[str, str, int]  # (scheme, host, port): where a request goes
TWILIO_BASE_URL = "https://api.twilio.com"


@dataclass(frozen=True)
class KindSpec:
    config_required: tuple[str, ...] = ()
    config_optional: tuple[str, ...] = ()
    secret_required: tuple[str, ...] = ()
    secret_optional: tuple[str, ...] = ()
    # the config field that pairs with the secret in HTTP basic / SMTP PLAIN credentials
    identity: str | None = None


KINDS: dict[str, KindSpec] = {
    # security: starttls (default) | tls | none; port defaults by security (587, 465, 25).
    "smtp": KindSpec(
        config_required=("host",),
        config_optional=(
            "port",
            "security",
            "username",
            "from",
            "timeout_s",
            "unsubscribe_url",
            "unsubscribe_mailto",
        ),
        secret_optional=("password",),
        identity="username",
    ),
    # url: default target when a step gives none; allowed_hosts: the other origins a step
    # may send to (url's origin always may); one of them is required; headers: extra
    # non-secret headers.
    # secret: signing_secret (HMAC-SHA256 of the body), headers (secret headers, e.g. Authorization).
    "webhook": KindSpec(
        config_optional=("url", "allowed_hosts", "headers"),
        secret_optional=("signing_secret", "headers"),
    ),
    "slack": KindSpec(secret_required=("webhook_url",)),
    "discord": KindSpec(secret_required=("webhook_url",)),
    # Twilio-compatible SMS API; base_url defaults to https://api.twilio.com.
    "twilio": KindSpec(
        config_required=("account_sid",),
        config_optional=("base_url", "from"),
        secret_required=("auth_token",),
        identity="account_sid",
    ),
}


@dataclass(frozen=True)
class Connection:
    tenant_id: str
    name: str
    kind: str
    config: dict[str, Any]
    secret: dict[str, Any] = field(default_factory=dict, repr=False)

    @cached_property
    def redactor(self) -> Redactor:
        """Redacts every form of this connection's secrets (`secrets.secret_forms`) and
        credential-named query parameters from what an action reports."""
        spec = KINDS.get(self.kind)
        identity = self.config.get(spec.identity) if spec is not None and spec.identity else None
        return _redactor(json.dumps(self.secret, sort_keys=True), str(identity) if identity else None)

    @cached_property
    def origins(self) -> tuple[Origin, ...]:
        """Where this connection's credentials may be sent (see `allowed_origins`)."""
        return allowed_origins(self.kind, self.config, self.secret)

    def check_url(self, url: str) -> None:
        """Raise HostNotAllowed unless a request to `url` may carry this connection's credentials."""
        try:
            target = netguard.origin(url)
        except (netguard.BlockedAddress, ValueError):
            return  # not a URL a request can go to: the HTTP client refuses it with its own error
        if target in self.origins:
            return
        if not self.origins:
            raise HostNotAllowed(
                f"connection {self.name!r} names no host its credentials may be sent to: set its"
                " config.url or config.allowed_hosts (conveyor connections add --replace)"
            )
        raise HostNotAllowed(
            f"the URL's host {format_origin(target)} is not one connection {self.name!r} may send"
            f" its credentials to (allowed: {', '.join(map(format_origin, self.origins))});"
            " add it to the connection's config.allowed_hosts or use another connection"
        )


@lru_cache(maxsize=256)
def _redactor(secret: str, identity: str | None) -> Redactor:
    """A connection's redactor, made once per secret: the runner loads connections anew
    for every batch it reads, and making one costs tens of microseconds."""
    return Redactor(secret_forms(json.loads(secret), [identity] if identity else []))


class HostNotAllowed(ConveyorError):
    """A request would carry a connection's credentials to a host the connection does not name."""


def format_origin(origin: Origin) -> str:
    scheme, host, port = origin
    name = f"[{host}]" if ":" in host else host
    return f"{scheme}://{name}" if port == netguard.DEFAULT_PORTS[scheme] else f"{scheme}://{name}:{port}"


def parse_allowed_host(entry: Any) -> Origin:
    """An `allowed_hosts` entry: an origin (`http://127.0.0.1:8080`, `https://api.example.com`)
    or a host name with an optional port (`api.example.com`, `api.example.com:8443`), which
    means https. Raises ValueError naming what is wrong."""
    if not isinstance(entry, str) or not entry.strip():
        raise ValueError(f"{entry!r} is not a host name or an origin like https://api.example.com")
    text = entry.strip()
    url = text if "://" in text else f"https://{text}"
    parts = urlsplit(url)
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"{entry!r} must be an origin (scheme://host[:port]) or a host, without a path")
    try:
        return netguard.origin(url)
    except (netguard.BlockedAddress, ValueError) as exc:
        raise ValueError(f"{entry!r}: {exc}") from None


def allowed_origins(kind: str, config: dict[str, Any], secret: dict[str, Any]) -> tuple[Origin, ...]:
    """The (scheme, host, port) a connection's credentials may go to, by kind: a webhook's
    config.url and config.allowed_hosts; a Slack or Discord connection's webhook URL; a
    twilio connection's base_url (default https://api.twilio.com). SMTP is not HTTP: its
    credentials only ever go to config.host, which no step can change."""
    urls: list[Any] = []
    entries: list[Any] = []
    if kind == "webhook":
        urls = [config.get("url")]
        allowed = config.get("allowed_hosts")
        entries = allowed if isinstance(allowed, list) else []
    elif kind in ("slack", "discord"):
        urls = [secret.get("webhook_url")]
    elif kind == "twilio":
        urls = [config.get("base_url") or TWILIO_BASE_URL]
    found: list[Origin] = []
    for url in urls:
        try:
            found.append(netguard.origin(str(url)))
        except (netguard.BlockedAddress, ValueError):
            continue  # no URL (or not an http(s) one): it names no host
    for entry in entries:
        try:
            found.append(parse_allowed_host(entry))
        except ValueError:
            continue
    return tuple(dict.fromkeys(found))


def validate(kind: str, config: dict[str, Any], secret: dict[str, Any]) -> None:
    spec = KINDS.get(kind)
    if spec is None:
        raise ConveyorError(f"unknown connection kind {kind!r}; known: {', '.join(sorted(KINDS))}")
    problems = []
    for name in spec.config_required:
        if config.get(name) in (None, ""):
            problems.append(f"config.{name} is required")
    for name in spec.secret_required:
        if secret.get(name) in (None, ""):
            problems.append(f"secret.{name} is required")
    for name in config:
        if name not in spec.config_required + spec.config_optional:
            hint = (
                " (it is a secret field: pass it in the secret)"
                if name in spec.secret_optional + spec.secret_required
                else ""
            )
            problems.append(f"config.{name} is not a {kind} setting{hint}")
    for name in secret:
        if name not in spec.secret_required + spec.secret_optional:
            problems.append(f"secret.{name} is not a {kind} secret field")
    if kind == "smtp" and config.get("security", "starttls") not in ("starttls", "tls", "none"):
        problems.append("config.security must be starttls, tls or none")
    problems += _url_problems(kind, config, secret)
    if problems:
        raise ConveyorError(f"{kind} connection: " + "; ".join(problems))


_URL_FIELDS = {
    "webhook": ("config", "url"),
    "twilio": ("config", "base_url"),
    "slack": ("secret", "webhook_url"),
    "discord": ("secret", "webhook_url"),
}


def _url_problems(kind: str, config: dict[str, Any], secret: dict[str, Any]) -> list[str]:
    """The URL fields that are not http(s) URLs, and a webhook connection naming no host."""
    problems = []
    if kind in _URL_FIELDS:
        where, name = _URL_FIELDS[kind]
        value = (config if where == "config" else secret).get(name)
        try:
            if value not in (None, ""):
                netguard.origin(str(value))
        except (netguard.BlockedAddress, ValueError) as exc:
            why = f" ({exc})" if where == "config" else ""  # a secret is never quoted back
            problems.append(f"{where}.{name} must be an http(s) URL with a host{why}")
    if kind == "webhook":
        allowed = config.get("allowed_hosts")
        if allowed is not None and not isinstance(allowed, list):
            problems.append("config.allowed_hosts must be a list of hosts or origins")
        for index, entry in enumerate(allowed if isinstance(allowed, list) else []):
            try:
                parse_allowed_host(entry)
            except ValueError as exc:
                problems.append(f"config.allowed_hosts[{index}]: {exc}")
        if not config.get("url") and not allowed:
            problems.append(
                "config.url or config.allowed_hosts is required: the hosts a step using this"
                " connection may send to (its credentials go nowhere else)"
            )
    return problems


Conn = psycopg.Connection[Any]


def add(
    conn: Conn,
    box: SecretBox | None,
    *,
    tenant_id: str,
    name: str,
    kind: str,
    config: dict[str, Any],
    secret: dict[str, Any],
    replace: bool = False,
) -> None:
    validate(kind, config, secret)
    if secret and box is None:
        raise ConveyorError("CONVEYOR_SECRET_KEY is not set: a connection with a secret cannot be stored")
    token = box.encrypt(secret) if secret and box is not None else None
    conflict = (
        "on conflict (tenant_id, name) do update set kind = excluded.kind, config = excluded.config,"
        " secret = excluded.secret, updated_at = now()"
        if replace
        else ""
    )
    try:
        conn.execute(
            "insert into conveyor.connections (tenant_id, name, kind, config, secret)"
            f" values (%s, %s, %s, %s, %s) {conflict}",
            (tenant_id, name, kind, Jsonb(config), token),
        )
    except psycopg.errors.UniqueViolation as exc:
        raise ConveyorError(
            f"tenant {tenant_id!r} already has a connection named {name!r} (use --replace)"
        ) from exc
    except psycopg.errors.ForeignKeyViolation as exc:
        raise ConveyorError(f"no tenant {tenant_id!r}") from exc
    except psycopg.errors.CheckViolation as exc:
        raise ConveyorError(
            f"connection name {name!r} must be lowercase letters, digits, '_', '.', '-'"
        ) from exc


def list_connections(conn: Conn, tenant_id: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "select name, kind, config, secret is not null as has_secret, created_at, updated_at"
            " from conveyor.connections where tenant_id = %s order by name",
            (tenant_id,),
        ).fetchall()


def remove(conn: Conn, tenant_id: str, name: str) -> bool:
    cur = conn.execute(
        "delete from conveyor.connections where tenant_id = %s and name = %s", (tenant_id, name)
    )
    return cur.rowcount > 0


def load(conn: Conn, box: SecretBox | None, tenant_id: str, name: str) -> Connection:
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(
            "select kind, config, secret from conveyor.connections where tenant_id = %s and name = %s",
            (tenant_id, name),
        ).fetchone()
    if row is None:
        raise ConveyorError(f"tenant {tenant_id!r} has no connection named {name!r}")
    kind, config, token = row[0], row[1], row[2]
    secret: dict[str, Any] = {}
    if token is not None:
        if box is None:
            raise ConveyorError(f"connection {name!r} has a secret but CONVEYOR_SECRET_KEY is not set")
        secret = box.decrypt(token)
    return Connection(tenant_id=tenant_id, name=name, kind=kind, config=dict(config), secret=secret)


def rotate(conn: Conn, box: SecretBox, tenant_id: str | None = None) -> int:
    """Re-encrypt every secret (of one tenant, or all) under the first key; one transaction."""
    with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
        rows = cur.execute(
            "select tenant_id, name, secret from conveyor.connections"
            " where secret is not null and (%s::text is null or tenant_id = %s)"
            " for update",
            (tenant_id, tenant_id),
        ).fetchall()
        updates = [(box.rotate(row[2]), row[0], row[1]) for row in rows]
        if updates:
            cur.executemany(
                "update conveyor.connections set secret = %s, updated_at = now()"
                " where tenant_id = %s and name = %s",
                updates,
            )
    return len(updates)
