"""Connection secrets: Fernet encryption under CONVEYOR_SECRET_KEY, and redaction.

`CONVEYOR_SECRET_KEY` is a comma-separated list of Fernet keys (urlsafe base64 of 32
bytes, as `conveyor connections keygen` prints). The first key encrypts; every key
decrypts. Rotating: put a new key first (keep the old one after it), run
`conveyor connections rotate` (re-encrypts every secret under the first key), then
drop the old key.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from conveyor.errors import ConveyorError

REDACTED = "[redacted]"
# What replaces the secret part of a URL (a webhook URL's path, a query token's value).
MASK = "***"
# Secrets shorter than this are not substituted inside longer strings (a 2-character
# "secret" would shred every message); they are still redacted where a value equals one.
_MIN_SUBSTRING_LEN = 4


def generate_key() -> str:
    return Fernet.generate_key().decode()


class SecretBox:
    """Encrypts and decrypts connection secrets (a JSON object) with MultiFernet."""

    def __init__(self, keys: str | Iterable[str]) -> None:
        if isinstance(keys, str):
            keys = keys.split(",")
        key_list = [k.strip() for k in keys if k.strip()]
        if not key_list:
            raise ConveyorError("CONVEYOR_SECRET_KEY is not set: connection secrets cannot be used")
        try:
            self._fernet = MultiFernet([Fernet(k.encode()) for k in key_list])
        except (ValueError, TypeError) as exc:
            raise ConveyorError(
                "CONVEYOR_SECRET_KEY holds a malformed key: each comma-separated key must be "
                "32 url-safe base64-encoded bytes (generate one with `conveyor connections keygen`)"
            ) from exc

    @classmethod
    def from_env(cls) -> SecretBox:
        return cls(os.environ.get("CONVEYOR_SECRET_KEY", ""))

    def encrypt(self, secret: dict[str, Any]) -> bytes:
        return self._fernet.encrypt(json.dumps(secret, sort_keys=True).encode())

    def decrypt(self, token: bytes) -> dict[str, Any]:
        try:
            value = json.loads(self._fernet.decrypt(bytes(token)))
        except InvalidToken as exc:
            raise ConveyorError(
                "a connection secret cannot be decrypted with any key in CONVEYOR_SECRET_KEY"
            ) from exc
        if not isinstance(value, dict):
            raise ConveyorError("a connection secret is not a JSON object")
        return value

    def rotate(self, token: bytes) -> bytes:
        """Re-encrypt under the first key (decrypting with any)."""
        try:
            return self._fernet.rotate(bytes(token))
        except InvalidToken as exc:
            raise ConveyorError(
                "a connection secret cannot be decrypted with any key in CONVEYOR_SECRET_KEY"
            ) from exc


def secret_strings(secret: Any) -> set[str]:
    """Every string (and number as text) inside a secret object: what must never leak."""
    found: set[str] = set()
    if isinstance(secret, dict):
        for value in secret.values():
            found |= secret_strings(value)
    elif isinstance(secret, list):
        for value in secret:
            found |= secret_strings(value)
    elif isinstance(secret, str) and secret:
        found.add(secret)
    elif isinstance(secret, int | float) and not isinstance(secret, bool):
        found.add(str(secret))
    return found


def redact(value: Any, secrets: Iterable[str]) -> Any:
    """`value` with every occurrence of a secret replaced by "[redacted]" (deeply, keys too)."""
    return Redactor(dict.fromkeys(secrets, REDACTED), query_tokens=False)(value)


# Query parameters whose value is a credential (`?token=`, `&api_key=`, `sig=`,
# `X-Amz-Signature=`, ...): the value is masked wherever a URL is reported.
_QUERY_TOKEN = re.compile(
    r"([?&;](?:x-(?:amz|goog)-)?(?:access|refresh|id|auth|session|api|client|private|secret|security)?"
    r"[_-]?(?:token|key|secret|signature|sig|password|passwd|pwd|auth|credential)=)"
    r"[^&#\s\"'<>\\]+",
    re.IGNORECASE,
)
# What a scheme-prefixed Authorization value looks like: the credential is after the scheme.
_AUTH_VALUE = re.compile(r"^\s*(Basic|Bearer|Token|Bot|Digest)\s+(\S+)\s*$", re.IGNORECASE)
# A path segment of a secret URL at least this long is a secret on its own (a Slack or
# Discord webhook token); shorter ones (Slack's T000/B000 ids) only as part of the path.
_MIN_SEGMENT_LEN = 8


def mask_query_tokens(text: str) -> str:
    """`text` with the value of every credential-named query parameter replaced by ***."""
    if "=" not in text:
        return text
    return _QUERY_TOKEN.sub(rf"\1{MASK}", text)


class Redactor:
    """Replaces each form of a secret (longest first) with its replacement, deeply, keys too;
    with `query_tokens`, also masks credential-named query parameters (`mask_query_tokens`)."""

    def __init__(self, forms: dict[str, str], *, query_tokens: bool = True) -> None:
        self.exact = {form: replacement for form, replacement in forms.items() if form}
        self.ordered = sorted(
            ((f, r) for f, r in self.exact.items() if len(f) >= _MIN_SUBSTRING_LEN),
            key=lambda item: len(item[0]),
            reverse=True,
        )
        self.query_tokens = query_tokens

    def __call__(self, value: Any) -> Any:
        if not self.exact and not self.query_tokens:
            return value
        return self._value(value)

    def _value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(k)): self._value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._value(v) for v in value]
        if isinstance(value, int | float) and not isinstance(value, bool) and str(value) in self.exact:
            return self.exact[str(value)]
        return value

    def text(self, text: str) -> str:
        replacement = self.exact.get(text)
        if replacement is not None:
            return replacement
        for form, replacement in self.ordered:
            if form in text:
                text = text.replace(form, replacement)
        return mask_query_tokens(text) if self.query_tokens else text


QUERY_TOKENS = Redactor({})


def secret_forms(secret: Any, identities: Iterable[str] = ()) -> dict[str, str]:
    """Every form a connection's secret may take in what an action reports, with what replaces it.

    Each secret string as it is, URL-encoded, JSON-escaped and base64-encoded; the
    credential of an `Authorization`-style value (`Bearer <c>`, `Basic <c>` and, for
    Basic, its decoded `user:password` and password); HTTP basic and SMTP PLAIN
    credentials made of an identity (`identities`: the account sid, the user name) and
    the secret. A secret that is an http(s) URL with a path (a Slack or Discord webhook)
    keeps its host and first path segment: the rest of the path, its query and each long
    segment become *** (`https://hooks.slack.com/services/***`).
    """
    forms: dict[str, str] = {}
    users = [u for u in identities if u]
    for value in secret_strings(secret):
        if _url_forms(value, forms):
            continue
        _plain_forms(value, forms)
        auth = _AUTH_VALUE.match(value)
        if auth is not None:
            _plain_forms(auth.group(2), forms)
            if auth.group(1).lower() == "basic":
                _basic_forms(auth.group(2), forms)
        for user in users:  # HTTP basic (user:secret) and SMTP AUTH PLAIN (\0user\0secret)
            for credential in (f"{user}:{value}", f"\0{user}\0{value}"):
                encoded = base64.b64encode(credential.encode()).decode()
                for form in (*_base64(encoded), quote(encoded, safe="")):
                    forms.setdefault(form, REDACTED)
    return forms


def _plain_forms(value: str, forms: dict[str, str]) -> None:
    encoded = value.encode()
    for form in (
        value,
        quote(value, safe=""),
        quote_plus(value),
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        # padded, and unpadded (as in JWTs and URLs)
        *_base64(base64.b64encode(encoded).decode()),
        *_base64(base64.urlsafe_b64encode(encoded).decode()),
    ):
        forms.setdefault(form, REDACTED)


def _base64(encoded: str) -> tuple[str, str]:
    return encoded, encoded.rstrip("=")


def _basic_forms(credential: str, forms: dict[str, str]) -> None:
    """The decoded `user:password` of a Basic credential, and the password alone."""
    try:
        decoded = base64.b64decode(credential, validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return
    _plain_forms(decoded, forms)
    password = decoded.partition(":")[2]
    if password:
        _plain_forms(password, forms)


def _url_forms(value: str, forms: dict[str, str]) -> bool:
    """Register a secret URL's secret parts; False when `value` is not such a URL."""
    if not value.lower().startswith(("http://", "https://")):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    if parts.password:  # https://user:password@host/...
        _plain_forms(parts.password, forms)
    segments = [s for s in parts.path.split("/") if s]
    secret_path = "/".join(segments[1:] if len(segments) > 1 else segments)
    tail = f"{secret_path}?{parts.query}" if parts.query else secret_path
    if not tail or not parts.hostname:
        return False  # no path: the URL as a whole is the secret
    for form in (tail, secret_path, quote(tail, safe=""), quote(secret_path, safe=""), parts.query):
        if form:
            forms.setdefault(form, MASK)
    for segment in secret_path.split("/"):
        if len(segment) >= _MIN_SEGMENT_LEN:
            forms.setdefault(segment, MASK)
    return True
