"""Shared fixtures: a real Mosquitto on a free loopback port, unique topic prefixes."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from schemas import Topics
from sled.mosquitto import Mosquitto, MosquittoNotFound, mosquitto_binary
from sled.transport import MqttConfig


def _require_mosquitto() -> None:
    try:
        mosquitto_binary()
    except MosquittoNotFound as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def broker() -> Iterator[Mosquitto]:
    """One anonymous Mosquitto for the session; tests isolate with ``topics``."""
    _require_mosquitto()
    with Mosquitto.start() as b:
        yield b


@pytest.fixture
def fresh_broker() -> Iterator[Mosquitto]:
    """A Mosquitto of the test's own, for tests that stop or restart it."""
    _require_mosquitto()
    with Mosquitto.start() as b:
        yield b


@pytest.fixture
def topics() -> Topics:
    """A topic layout under a prefix no other test uses."""
    return Topics(prefix=f"test/{uuid.uuid4().hex[:10]}/sled/v1")


@pytest.fixture
def mqtt_config(broker: Mosquitto) -> MqttConfig:
    return MqttConfig(host=broker.host, port=broker.port, connect_timeout_s=5, op_timeout_s=5)
