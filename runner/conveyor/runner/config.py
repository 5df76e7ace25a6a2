"""The runner's settings (`conveyor run`'s flags and environment variables)."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg.conninfo import conninfo_to_dict

from conveyor.errors import ConveyorError
from conveyor.results import MAX_OUTPUT_BYTES, MIN_OUTPUT_BYTES
from conveyor.runner.shared import first_line


@dataclass
class RunnerConfig:
    """The runner's settings. `conveyor run` fills them from flags, each of which defaults to
    one environment variable (named next to each field); the secret key is read from the
    environment only, so it never appears in a process list."""

    database_url: str
    heartbeat_interval: float = 10.0  # CONVEYOR_HEARTBEAT_INTERVAL
    concurrency: int = 16  # CONVEYOR_CONCURRENCY
    batch_size: int = 10  # CONVEYOR_BATCH_SIZE
    poll_interval: float = 1.0  # CONVEYOR_POLL_INTERVAL
    visibility_margin: float = 30.0  # CONVEYOR_VISIBILITY_MARGIN
    shutdown_grace: float = 30.0  # CONVEYOR_SHUTDOWN_GRACE
    secret_key: str = ""  # CONVEYOR_SECRET_KEY
    allow_private_networks: str = ""  # CONVEYOR_ALLOW_PRIVATE_NETWORKS
    metrics_address: str = ""  # CONVEYOR_METRICS_ADDRESS (host:port; empty: off)
    max_output_bytes: int = MAX_OUTPUT_BYTES  # CONVEYOR_MAX_OUTPUT_BYTES

    def validate(self) -> None:
        if self.concurrency < 1:
            raise ConveyorError("CONVEYOR_CONCURRENCY must be at least 1")
        if self.batch_size < 1:
            raise ConveyorError("CONVEYOR_BATCH_SIZE must be at least 1")
        if self.poll_interval <= 0 or self.heartbeat_interval <= 0:
            raise ConveyorError("CONVEYOR_POLL_INTERVAL and CONVEYOR_HEARTBEAT_INTERVAL must be positive")
        if self.visibility_margin < 0 or self.shutdown_grace < 0:
            raise ConveyorError("CONVEYOR_VISIBILITY_MARGIN and CONVEYOR_SHUTDOWN_GRACE must not be negative")
        if self.max_output_bytes < MIN_OUTPUT_BYTES:
            raise ConveyorError(f"CONVEYOR_MAX_OUTPUT_BYTES must be at least {MIN_OUTPUT_BYTES}")
        try:
            conninfo_to_dict(self.database_url)
        except psycopg.ProgrammingError as exc:
            raise ConveyorError(
                f"the database URL is not a valid connection string: {first_line(exc)}"
            ) from exc

    @property
    def low_water(self) -> int:
        """Free slots worth a read: half a batch (see Loop.read_and_start)."""
        return max(1, min(self.batch_size, self.concurrency) // 2)
