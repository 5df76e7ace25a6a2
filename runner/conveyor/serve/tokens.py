"""Short-lived signed tokens for a platform's user: the notification stream's and the
console's credentials (docs/tokens.md).

The platform signs one for its signed-in user (HS256, PyJWT or any JWT library) with the
secret it shares with `conveyor serve`, `CONVEYOR_TOKEN_SECRET`; the server verifies it on
every request or stream. Claims: `aud` "conveyor", `sub` the user id, `tenant` the tenant id,
`operator` (optional, true for access to every tenant), `iat` and `exp` (required).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt

from conveyor.errors import ConveyorError

SECRET_ENV = "CONVEYOR_TOKEN_SECRET"
AUDIENCE = "conveyor"
ALGORITHM = "HS256"
MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key at least as long as the hash
MAX_TTL_S = 24 * 3600
LEEWAY_S = 5  # clock skew between the platform's hosts and the server's
_TTL = re.compile(r"([0-9]+)\s*(s|m|h)?")
_UNITS = {"s": 1, "m": 60, "h": 3600, None: 1}


class TokenError(Exception):
    """A token that proves nothing; the message says what is wrong (answered as 401)."""


@dataclass(frozen=True)
class Principal:
    tenant: str
    user: str
    operator: bool
    expires_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "user": self.user,
            "operator": self.operator,
            "expires_at": self.expires_at.isoformat().replace("+00:00", "Z"),
        }


def secret_from_env(required: bool = True) -> str | None:
    """The token secret from CONVEYOR_TOKEN_SECRET, checked; None when unset and not required."""
    secret = os.environ.get(SECRET_ENV, "")
    if not secret:
        if required:
            raise ConveyorError(
                f"{SECRET_ENV} is not set: the secret that signs and verifies user tokens "
                '(at least 32 bytes, e.g. python -c "import secrets; print(secrets.token_urlsafe(48))")'
            )
        return None
    check_secret(secret)
    return secret


def check_secret(secret: str) -> None:
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ConveyorError(
            f"{SECRET_ENV} is {len(secret.encode())} bytes; it must be at least {MIN_SECRET_BYTES}"
        )


def parse_ttl(text: str) -> int:
    """`15m`, `1h`, `90s` or `900` (seconds) → seconds, at most 24 h."""
    match = _TTL.fullmatch(text.strip())
    if not match:
        raise ConveyorError(f"--ttl {text!r} is not a duration: use e.g. 90s, 15m, 1h (or seconds)")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if not 0 < seconds <= MAX_TTL_S:
        raise ConveyorError(f"--ttl {text!r} must be more than 0 and at most 24h: tokens are short-lived")
    return seconds


def sign(
    secret: str, tenant: str, user: str, ttl_s: int, *, operator: bool = False, now: float | None = None
) -> str:
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "aud": AUDIENCE,
        "sub": user,
        "tenant": tenant,
        "iat": issued,
        "exp": issued + ttl_s,
    }
    if operator:
        claims["operator"] = True
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify(secret: str, token: str | None) -> Principal:
    """The principal a token proves, or a TokenError naming what is wrong."""
    if not token:
        raise TokenError(
            "missing token: send Authorization: Bearer <token> (or ?access_token=<token> from a browser's EventSource)"
        )
    try:
        header = jwt.get_unverified_header(token)
    except jwt.DecodeError as exc:
        raise TokenError(f"token is malformed: {exc}") from None
    if header.get("alg") != ALGORITHM:
        raise TokenError(f"token algorithm {header.get('alg')!r} is not accepted (only {ALGORITHM})")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            leeway=LEEWAY_S,
            options={"require": ["exp", "iat", "sub", "tenant", "aud"]},
        )
    except jwt.ExpiredSignatureError:
        raise TokenError(f"token expired at {_expiry(token)}") from None
    except jwt.InvalidSignatureError:
        raise TokenError(f"token signature does not match (was it signed with {SECRET_ENV}?)") from None
    except jwt.MissingRequiredClaimError as exc:
        raise TokenError(f"token lacks the {exc.claim!r} claim") from None
    except jwt.InvalidAudienceError:
        raise TokenError(f"token audience (aud) must be {AUDIENCE!r}") from None
    except jwt.ImmatureSignatureError:
        raise TokenError("token is not valid yet: it was issued in the future (iat)") from None
    except jwt.InvalidTokenError as exc:
        raise TokenError(f"token is invalid: {exc}") from None
    return _principal(claims)


def _principal(claims: dict[str, Any]) -> Principal:
    for name in ("sub", "tenant"):
        if not isinstance(claims[name], str) or not claims[name]:
            raise TokenError(f"token claim {name!r} must be a non-empty string")
    operator = claims.get("operator", False)
    if not isinstance(operator, bool):
        raise TokenError("token claim 'operator' must be true or false")
    expires = datetime.fromtimestamp(claims["exp"], UTC)
    return Principal(claims["tenant"], claims["sub"], operator, expires)


def _expiry(token: str) -> str:
    # Only called once PyJWT found the signature good and `exp` past.
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    return datetime.fromtimestamp(float(exp), UTC).isoformat().replace("+00:00", "Z")


def bearer(authorization: str | None, query_token: str | None) -> str | None:
    """The token from `Authorization: Bearer ...`, else from `?access_token=`."""
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip() or None
    return query_token or None
