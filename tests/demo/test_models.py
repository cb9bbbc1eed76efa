"""The shipped ONNX drafters are exports of the shipped Hugging Face drafters.

After ``sled train-demo`` (or ``python -m sled.demo.train``) the drafters must be exported
again (``python -m sled.demo.export``; ``sled train-demo`` does it): this test fails
when ``drafter-*-onnx`` no longer matches ``drafter-*`` or the target's tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sled.demo.export import DRAFTERS
from sled.demo.run import default_models_dir

MODELS = default_models_dir()


@pytest.mark.parametrize("name", DRAFTERS)
def test_onnx_drafter_matches_its_source(name: str) -> None:
    """Every weight of the HF drafter is in the ONNX graph, bit for bit (or transposed)."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    from edge_node.manifest import Manifest
    from schemas import tokenizer_fingerprint

    src, onnx_dir = MODELS / name, MODELS / f"{name}-onnx"
    if not (src / "model.safetensors").is_file():
        pytest.skip(f"{src} is not shipped (only the ONNX export is)")
    manifest = Manifest.load(onnx_dir)
    assert manifest.dtype == "fp32" and manifest.source == name
    target_vocab = Tokenizer.from_file(str(MODELS / "target" / "tokenizer.json")).get_vocab(
        with_added_tokens=True
    )
    assert manifest.fingerprint == tokenizer_fingerprint(target_vocab)
    graph = onnx.load(str(onnx_dir / manifest.model_file)).graph
    exported = [numpy_helper.to_array(init) for init in graph.initializer]
    exported = [a for a in exported if a.dtype == np.float32 and a.size > 1]
    stale = []
    for key, weight in load_file(str(src / "model.safetensors")).items():
        w = weight.astype(np.float32)
        found = any(
            (a.shape == w.shape and np.array_equal(a, w))
            or (w.ndim == 2 and a.shape == w.T.shape and np.array_equal(a, w.T))
            for a in exported
        )
        if not found:
            stale.append(key)
    assert stale == [], f"{onnx_dir} is stale ({stale[:3]}…): python -m sled.demo.export"


def test_demo_model_set_size() -> None:
    shipped = [MODELS / "target", *(MODELS / f"{d}-onnx" for d in DRAFTERS)]
    size_mb = sum(f.stat().st_size for d in shipped for f in Path(d).rglob("*") if f.is_file())
    assert size_mb / 1e6 < 16, f"target + ONNX drafters: {size_mb / 1e6:.1f} MB"
