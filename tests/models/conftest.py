"""Fixtures for ``sled models``: a tiny GGUF file and its conversion (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sled.models.store import Entry, fetch
from tests.models.tiny_gguf import write_tiny_gguf

pytest.importorskip("gguf", reason="the models extra (gguf) is not installed")


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


@pytest.fixture(scope="session")
def tiny_entry(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Entry:
    """``tiny_gguf`` converted once into a session cache."""
    return fetch(str(tiny_gguf), cache=tmp_path_factory.mktemp("cache"), progress=lambda _: None)
