"""A real SMTP server (aiosmtpd) on a free local port that keeps every message it receives,
with its arrival time and envelope recipients: the `mailbox` fixture (tests/e2e/conftest.py)."""

from __future__ import annotations

import email
import email.message
import email.policy
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import free_port


class Mailbox:
    def __init__(self) -> None:
        self.received: list[tuple[float, list[str], email.message.EmailMessage]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, email.message.EmailMessage)
        self.received.append((time.time(), list(envelope.rcpt_tos), message))
        return "250 OK"


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    from aiosmtpd.controller import Controller

    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()
