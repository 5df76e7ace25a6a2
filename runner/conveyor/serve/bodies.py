"""Checks on a request body before it reaches SQL: JSON nesting, and what jsonb can store."""

from __future__ import annotations

import json
import math
import re
from typing import Any

# A JSON string (possibly unterminated), removed whole so the brackets inside do not count.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")


class BadRequest(Exception):
    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


def json_too_deep(body: bytes, limit: int) -> bool:
    """Whether the body's arrays and objects nest deeper than limit, counted without
    recursion and without parsing (json.loads would recurse, PostgreSQL's parser too)."""
    if body.lstrip()[:1] not in (b"[", b"{") or body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth = 0
    for bracket in _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS):
        if bracket in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text[:40]} is out of range")
    return number


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The manual run's body as a JSON object PostgreSQL can store (call after json_too_deep)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(400, f"body is not valid UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(text, parse_float=_finite, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise BadRequest(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest(400, "body must be a JSON object")
    # jsonb stores neither NUL nor unpaired surrogates (both are valid JSON escapes).
    pending: list[Any] = [data]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, str):
            if "\x00" in value:
                raise BadRequest(400, "body contains \\u0000, which cannot be stored")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise BadRequest(400, "body contains an unpaired UTF-16 surrogate escape") from None
    return data
