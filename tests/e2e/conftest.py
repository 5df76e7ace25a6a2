"""Fixtures several end-to-end test files share."""

from tests.e2e.hostile import platform

__all__ = ["platform"]
