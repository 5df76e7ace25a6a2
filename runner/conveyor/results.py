"""The results the runner writes back, made storable in jsonb and bounded in size.

PostgreSQL's jsonb refuses a NUL character (`\\u0000`: "unsupported Unicode escape
sequence"), a lone UTF-16 surrogate (`\\ud800`) and the numbers JSON has not (NaN,
Infinity, which Python's json reads and writes), and all arrive in what receivers answer
(a webhook's JSON body, a text body). A result the database refuses cannot be written,
so before writing:

* NUL and lone surrogates become U+FFFD (the replacement character), in keys and values;
  NaN and infinities become null;
* an output or error larger than `max_output_bytes` (CONVEYOR_MAX_OUTPUT_BYTES, default
  262,144: the bytes of its JSON text in UTF-8) is truncated with a marker: an object
  keeps its keys and loses its largest values first (a string to a prefix ending in
  "[truncated ...]", anything else to `{"truncated": true, "bytes": n, ...}`); any other
  value becomes that marker.

The common case costs one `json.dumps` of the batch, as writing it did before, and a few
substring searches: only a batch whose JSON text holds a `\\u0000` or `\\ud...` escape,
`NaN` or `Infinity`, or is longer than the cap, is walked.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_OUTPUT_BYTES = 262_144  # CONVEYOR_MAX_OUTPUT_BYTES
MIN_OUTPUT_BYTES = 4_096  # room for the markers
PREVIEW_CHARS = 1_000
REPLACEMENT = "\ufffd"
# Surrogates left in a Python string are lone ones: json.loads joins a valid \ud83d\ude00
# pair into one code point.
_SURROGATE = re.compile("[\ud800-\udfff]")
BOUNDED = ("output", "error")


def encode_results(results: list[dict[str, Any]], max_output_bytes: int = MAX_OUTPUT_BYTES) -> str:
    """The JSON text of `results`, which PostgreSQL's jsonb accepts, each output and error
    at most `max_output_bytes`. ASCII with escapes, as psycopg's Jsonb writes it: every
    non-ASCII character is at least as long escaped as in UTF-8, so a text within the cap
    holds no value over it."""
    try:
        text = json.dumps(results)
    except (RecursionError, TypeError, ValueError):  # nested too deeply, or not JSON at all
        text = ""
    if (
        text
        and len(text) <= max_output_bytes
        and "\\u0000" not in text
        and "\\ud" not in text
        and "NaN" not in text
        and "Infinity" not in text
    ):
        return text
    return json.dumps([_bounded(result, max_output_bytes) for result in results])


def storable(value: Any) -> Any:
    """`value` with NUL and lone surrogates replaced by U+FFFD in every string and key, and
    NaN and infinities by None."""
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {_clean(str(key)): storable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [storable(item) for item in value]
    return value


def _clean(text: str) -> str:
    if "\x00" in text:
        text = text.replace("\x00", REPLACEMENT)
    return _SURROGATE.sub(REPLACEMENT, text)


def _bounded(result: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    bounded = {}
    for key, value in result.items():
        try:
            value = storable(value)
            if key in BOUNDED:
                value = truncate(value, max_bytes)
        except RecursionError:
            value = {"truncated": True, "reason": "nested too deeply to store"}
        except (TypeError, ValueError) as exc:
            value = {"truncated": True, "reason": f"not JSON: {exc}"}
        bounded[key] = value
    return bounded


def size_of(value: Any) -> int:
    """The bytes of the value's JSON text in UTF-8 (what it takes in the database)."""
    return len(json.dumps(value, ensure_ascii=False).encode())


def truncate(value: Any, max_bytes: int) -> Any:
    """`value`, or the same truncated with markers when its JSON text is over `max_bytes`."""
    size = size_of(value)
    if size <= max_bytes:
        return value
    if isinstance(value, dict):
        sizes = {key: size_of(item) for key, item in value.items()}
        shrunk = dict(value)
        total = size
        for key in sorted(sizes, key=sizes.__getitem__, reverse=True):
            marker = _marker(value[key], sizes[key], max_bytes)
            total += size_of(marker) - sizes[key]
            shrunk[key] = marker
            if total <= max_bytes:
                return shrunk
    return _marker(value, size, max_bytes)


def _marker(value: Any, size: int, max_bytes: int) -> Any:
    note = (
        f"[truncated by the runner: {size} bytes, over the limit of {max_bytes} (CONVEYOR_MAX_OUTPUT_BYTES)]"
    )
    if isinstance(value, str):
        return value[: min(PREVIEW_CHARS, max_bytes // 8)] + "\u2026 " + note
    return {
        "truncated": True,
        "bytes": size,
        "max_output_bytes": max_bytes,
        "preview": json.dumps(value, ensure_ascii=False)[: min(PREVIEW_CHARS, max_bytes // 8)],
    }
