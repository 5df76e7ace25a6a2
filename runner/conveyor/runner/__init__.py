"""`conveyor run`: the runner process (loop.py says how its parts fit together)."""

from conveyor.runner.config import RunnerConfig
from conveyor.runner.loop import Runner

__all__ = ["Runner", "RunnerConfig"]
