"""Fixtures several end-to-end test files share."""

from tests.e2e.hostile import platform
from tests.e2e.mailbox import mailbox

__all__ = ["mailbox", "platform"]
