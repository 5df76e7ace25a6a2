"""Configuration from environment variables, one documented name each.

Every value can be overridden by a CLI flag; the environment is the default.
"""

from __future__ import annotations

import os
from pathlib import Path

# The project checkout: migrations/, sql/ and the embedded cluster live under it.
PROJECT_DIR = Path(os.environ.get("CONVEYOR_HOME", Path(__file__).resolve().parents[2]))

MIGRATIONS_DIR = PROJECT_DIR / "migrations"
SQL_DIR = PROJECT_DIR / "sql"


def embedded_dir() -> Path:
    """`CONVEYOR_EMBEDDED_DIR`: where the embedded cluster lives (default `.conveyor/pg`)."""
    return Path(os.environ.get("CONVEYOR_EMBEDDED_DIR", PROJECT_DIR / ".conveyor" / "pg"))


def embedded_port() -> int:
    """`CONVEYOR_EMBEDDED_PORT`: the loopback TCP port of the embedded cluster."""
    return int(os.environ.get("CONVEYOR_EMBEDDED_PORT", "54329"))


def server_os_user() -> str | None:
    """`CONVEYOR_PG_OS_USER`: the unprivileged system user that runs the server when
    Conveyor is started as root (default: `postgres` if it exists, else `conveyor`)."""
    return os.environ.get("CONVEYOR_PG_OS_USER") or None
