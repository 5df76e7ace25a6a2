"""Connection secrets: Fernet encryption under CONVEYOR_SECRET_KEY, and redaction.

`CONVEYOR_SECRET_KEY` is a comma-separated list of Fernet keys (urlsafe base64 of 32
bytes, as `conveyor connections keygen` prints). The first key encrypts; every key
decrypts. Rotating: put a new key first (keep the old one after it), run
`conveyor connections rotate` (re-encrypts every secret under the first key), then
drop the old key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from conveyor.errors import ConveyorError

REDACTED = "[redacted]"
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
    ordered = sorted({s for s in secrets if s}, key=len, reverse=True)
    if not ordered:
        return value
    return _redact(value, ordered)


def _redact(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        return _redact_text(value, secrets)
    if isinstance(value, dict):
        return {_redact_text(str(k), secrets): _redact(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v, secrets) for v in value]
    if isinstance(value, int | float) and not isinstance(value, bool) and str(value) in secrets:
        return REDACTED
    return value


def _redact_text(text: str, secrets: list[str]) -> str:
    if text in secrets:
        return REDACTED
    for secret in secrets:
        if len(secret) >= _MIN_SUBSTRING_LEN and secret in text:
            text = text.replace(secret, REDACTED)
    return text
