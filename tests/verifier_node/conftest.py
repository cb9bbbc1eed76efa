"""Fixtures of the verifier tests: tiny random-weight targets saved once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from tests.tiny_models import Family, make_tiny_model

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[Family, Path]:
    """One tiny model per family (vocab ~512, hidden 64, 2 layers)."""
    root = tmp_path_factory.mktemp("tiny")
    return {fam: make_tiny_model(fam, root / fam) for fam in ("llama", "qwen2", "gpt2")}


@pytest.fixture(scope="session")
def llama_dir(tiny_dirs: dict[Family, Path]) -> Path:
    return tiny_dirs["llama"]
