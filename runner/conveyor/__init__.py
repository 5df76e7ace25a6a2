"""Conveyor: a Postgres-native automation engine (the thin Python half)."""

__version__ = "0.2.0"
