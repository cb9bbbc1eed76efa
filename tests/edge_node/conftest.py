"""Fixtures of the edge-node tests: tiny models exported once per test session."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass(frozen=True)
class TinyDrafter:
    family: str
    hf_dir: Path  # save_pretrained folder (torch)
    onnx_dir: Path  # exported drafter (onnxruntime)


def _torch_one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _export(family: str, root: Path, dtype: str = "fp32", **model_kwargs: int) -> TinyDrafter:
    from edge_node.export import export_drafter
    from tests.tiny_models import make_tiny_model

    _torch_one_thread()
    hf_dir = root / f"{family}-hf"
    if not (hf_dir / "config.json").exists():
        make_tiny_model(family, hf_dir, **model_kwargs)  # type: ignore[arg-type]
    onnx_dir = root / f"{family}-{dtype}"
    export_drafter(hf_dir, onnx_dir, dtype=dtype, progress=lambda _line: None)
    return TinyDrafter(family, hf_dir, onnx_dir)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-drafters")


@pytest.fixture(scope="session")
def llama_drafter(tiny_root: Path) -> TinyDrafter:
    return _export("llama", tiny_root)


@pytest.fixture(scope="session")
def qwen2_drafter(tiny_root: Path) -> TinyDrafter:
    return _export("qwen2", tiny_root)


@pytest.fixture(scope="session")
def gpt2_drafter(tiny_root: Path) -> TinyDrafter:
    return _export("gpt2", tiny_root)


@pytest.fixture(scope="session")
def llama_int8(tiny_root: Path, llama_drafter: TinyDrafter) -> TinyDrafter:
    return _export("llama", tiny_root, dtype="int8")


@pytest.fixture(scope="session")
def llama_fp16(tiny_root: Path, llama_drafter: TinyDrafter) -> TinyDrafter:
    return _export("llama", tiny_root, dtype="fp16")


@pytest.fixture
def tiny(request: pytest.FixtureRequest) -> TinyDrafter:
    """A drafter by family name: ``parametrize("tiny", ["llama"], indirect=True)``."""
    drafter: TinyDrafter = request.getfixturevalue(f"{request.param}_drafter")
    return drafter
