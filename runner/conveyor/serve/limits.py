"""What one client of `conveyor serve` can make it hold (defaults: docs/limits.md, "Inbound HTTP")."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 10 * 1024 * 1024
    max_connections: int = 64
    request_timeout_s: float = 10.0
    max_json_depth: int = 64
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
