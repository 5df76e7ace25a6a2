"""Lengths of time as the CLI prints them, the one way every command does."""

from __future__ import annotations

from decimal import Decimal


def human(ms: float | int | Decimal | None) -> str:
    """A length of time in milliseconds, for people: 850ms, 4.2s, 3m 05s, 2h 10m, 3d 4h."""
    if ms is None:
        return "-"
    ms = float(ms)
    if ms < 1000:
        return f"{ms:.0f}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h {whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d {whole % 86400 // 3600}h"
