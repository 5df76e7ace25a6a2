"""Errors the CLI shows to a person as one clear line (and a non-zero exit)."""


class ConveyorError(Exception):
    """A failure with a message meant for the operator, not a traceback."""
