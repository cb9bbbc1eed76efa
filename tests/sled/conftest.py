from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sled.production import ProductionBroker, scratch_folder, start_production_broker


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A scratch folder the broker can read; skips without mosquitto or openssl."""
    yield from scratch_folder()


@pytest.fixture
def production_broker(scratch: Path) -> Iterator[ProductionBroker]:
    """broker/mosquitto.conf running on loopback, with users and a test CA."""
    prod = start_production_broker(scratch)
    try:
        yield prod
    finally:
        prod.broker.stop()


@pytest.fixture
def dynsec_broker(scratch: Path) -> Iterator[ProductionBroker]:
    """The same with the dynamic-security plugin in place of password_file and acl_file."""
    prod = start_production_broker(scratch, dynsec=True)
    try:
        yield prod
    finally:
        prod.broker.stop()
