"""What one client of `conveyor serve` can make it hold (defaults: docs/limits.md, "Inbound HTTP")."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 10 * 1024 * 1024
    # Each notification stream (SSE) holds its connection while its page is open: room for
    # a thousand streams and the API calls besides, on one event loop (docs/limits.md).
    max_connections: int = 2048
    request_timeout_s: float = 10.0
    max_json_depth: int = 64
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
