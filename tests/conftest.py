"""Shared fixtures: a real Mosquitto on a free loopback port, unique topic prefixes."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from runtime.mosquitto import Mosquitto, MosquittoNotFound, mosquitto_binary
from runtime.transport import MqttConfig
from schemas import Topics
from sled.credentials import Credential, default_group, write_credentials


def require_mosquitto() -> None:
    """Skip without mosquitto (fail in CI, where .ci/run installs it)."""
    try:
        mosquitto_binary()
    except MosquittoNotFound as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def broker() -> Iterator[Mosquitto]:
    """One anonymous Mosquitto for the session; tests isolate with ``topics``."""
    require_mosquitto()
    with Mosquitto.start() as b:
        yield b


@pytest.fixture
def fresh_broker() -> Iterator[Mosquitto]:
    """A Mosquitto of the test's own, for tests that stop or restart it."""
    require_mosquitto()
    with Mosquitto.start() as b:
        yield b


@pytest.fixture
def topics() -> Topics:
    """A topic layout under a prefix no other test uses."""
    return Topics(prefix=f"test/{uuid.uuid4().hex[:10]}/sled/v1")


@pytest.fixture
def mqtt_config(broker: Mosquitto) -> MqttConfig:
    return MqttConfig(host=broker.host, port=broker.port, connect_timeout_s=5, op_timeout_s=5)


@dataclass(frozen=True)
class SecureBroker:
    """A Mosquitto with ``allow_anonymous false``, a password file and the SLED ACL.

    The ACL is written for ``topics.prefix`` (the test's own prefix). ``users`` holds the
    clear-text credentials: devices ``pi-1`` and ``pi-2``, verifier ``v1``, app ``web``.
    """

    broker: Mosquitto
    topics: Topics
    users: dict[str, Credential]
    password_file: Path
    acl_file: Path

    def config(self, username: str | None, **changes: Any) -> MqttConfig:
        """Client config for ``username`` (its real password unless ``password=`` is given)."""
        return login_config(self.broker, self.users, username, **changes)


def login_config(
    broker: Mosquitto, users: dict[str, Credential], username: str | None, **changes: Any
) -> MqttConfig:
    """A client of ``broker`` logged in as ``username`` with its password from ``users``
    (none for an unknown name), 5 s timeouts; ``changes`` override any field."""
    password = users[username].password if username in users else None
    cfg = MqttConfig(
        host=broker.host,
        port=broker.port,
        username=username,
        password=password,
        connect_timeout_s=5,
        op_timeout_s=5,
    )
    return cfg.with_(**changes)


@pytest.fixture
def secure_broker(topics: Topics) -> Iterator[SecureBroker]:
    """A Mosquitto of the test's own with credentials and ACL from ``sled.credentials``."""
    require_mosquitto()
    with tempfile.TemporaryDirectory(prefix="sled-secure-") as tmp:
        os.chmod(tmp, 0o755)  # mosquitto may drop root privileges; it must read these
        password_file, acl_file = Path(tmp) / "passwd", Path(tmp) / "acl"
        made = write_credentials(
            password_file,
            acl_file,
            prefix=topics.prefix,
            devices=["pi-1", "pi-2"],
            verifiers=["v1"],
            apps=["web"],
            group=default_group(),
        )
        with Mosquitto.start(password_file=password_file, acl_file=acl_file) as b:
            yield SecureBroker(b, topics, {c.username: c for c in made}, password_file, acl_file)
