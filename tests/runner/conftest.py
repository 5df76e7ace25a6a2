"""Fixtures shared by the runner's action tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conveyor.actions import Environment
from conveyor.netguard import NetworkPolicy


@pytest.fixture
def env() -> Iterator[Environment]:
    """The actions' environment, with the local test servers' addresses allowlisted."""
    environment = Environment.create(NetworkPolicy.parse("127.0.0.1/32,::1/128"))
    yield environment
    environment.close()
