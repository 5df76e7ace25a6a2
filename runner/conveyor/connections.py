"""Connections: named, per-tenant endpoints and credentials that actions use.

Rows live in `conveyor.connections` (migrations/0006): `config` (not secret) in clear,
`secret` (a JSON object) encrypted with `SecretBox`. Each kind names the fields it
needs; `validate` checks them when a connection is added, so a bad connection fails
at `conveyor connections add`, not at 3 a.m. in a workflow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row, tuple_row
from psycopg.types.json import Jsonb

from conveyor.errors import ConveyorError
from conveyor.secrets import SecretBox, secret_strings


@dataclass(frozen=True)
class KindSpec:
    config_required: tuple[str, ...] = ()
    config_optional: tuple[str, ...] = ()
    secret_required: tuple[str, ...] = ()
    secret_optional: tuple[str, ...] = ()


KINDS: dict[str, KindSpec] = {
    # security: starttls (default) | tls | none; port defaults by security (587, 465, 25).
    "smtp": KindSpec(
        config_required=("host",),
        config_optional=("port", "security", "username", "from", "timeout_s"),
        secret_optional=("password",),
    ),
    # url: default target when a step gives none; headers: extra non-secret headers.
    # secret: signing_secret (HMAC-SHA256 of the body), headers (secret headers, e.g. Authorization).
    "webhook": KindSpec(
        config_optional=("url", "headers"),
        secret_optional=("signing_secret", "headers"),
    ),
    "slack": KindSpec(secret_required=("webhook_url",)),
    "discord": KindSpec(secret_required=("webhook_url",)),
    # Twilio-compatible SMS API; base_url defaults to https://api.twilio.com.
    "twilio": KindSpec(
        config_required=("account_sid",),
        config_optional=("base_url", "from"),
        secret_required=("auth_token",),
    ),
}


@dataclass(frozen=True)
class Connection:
    tenant_id: str
    name: str
    kind: str
    config: dict[str, Any]
    secret: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def secret_values(self) -> set[str]:
        """Every secret string this connection holds: redacted from whatever leaves the runner."""
        return secret_strings(self.secret)


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
    if problems:
        raise ConveyorError(f"{kind} connection: " + "; ".join(problems))


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
