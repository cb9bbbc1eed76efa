"""ONNX drafter vs the torch model it was exported from: prefill, cached steps, rollback."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edge_node.drafter import Drafter
from edge_node.manifest import Manifest
from tests.edge_node.conftest import TinyDrafter

TOL = 1e-4  # max |onnx - torch| of fp32 logits


def _torch_logits(hf_dir, ids: list[int]) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Next-token logits after ``ids`` from a full (uncached) torch forward. [vocab]"""
    import torch

    from edge_node.export import load_torch_model

    torch.set_num_threads(1)
    model = _MODELS.get(hf_dir) or _MODELS.setdefault(hf_dir, load_torch_model(hf_dir))
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]))
    return np.asarray(out.logits[0, -1].numpy())


_MODELS: dict[Any, Any] = {}


@pytest.mark.parametrize("tiny", ["llama", "qwen2", "gpt2"], indirect=True)
def test_prefill_steps_and_rollback_match_torch(tiny: TinyDrafter) -> None:
    import torch

    from edge_node.export import load_torch_model

    torch.set_num_threads(1)
    model = load_torch_model(tiny.hf_dir)
    drafter = Drafter(tiny.onnx_dir, threads=1)
    state = drafter.new_state()
    prompt = drafter.encode("In the beginning God created")
    assert len(prompt) >= 3

    # prefill: torch with its own cache, ONNX with ours
    with torch.no_grad():
        out = model(input_ids=torch.tensor([prompt]), use_cache=True)
    cache = out.cache
    ref = out.logits[0, -1].numpy()
    got = drafter.feed(state, prompt)
    diffs = [float(np.abs(got - ref).max())]

    # 6 incremental steps, each one token through the KV cache
    for _ in range(6):
        tok = int(np.argmax(ref))
        with torch.no_grad():
            out = model(input_ids=torch.tensor([[tok]]), cache=cache, use_cache=True)
        cache = out.cache
        ref = out.logits[0, -1].numpy()
        got = drafter.feed(state, [tok])
        diffs.append(float(np.abs(got - ref).max()))
    assert len(state) == len(prompt) + 6
    assert state.past[0].shape[2] == len(prompt) + 6  # [1, kv_heads, seq, head_dim]

    # rollback into the drafted steps, then continue with a different token
    keep = len(prompt) + 2
    drafter.rollback(state, keep)
    assert state.past[0].shape[2] == keep
    kept_ids = list(state.tokens)
    diffs.append(float(np.abs(state.next_logits - _torch_logits(tiny.hf_dir, kept_ids)).max()))
    other = (kept_ids[-1] + 7) % drafter.vocab_size
    got = drafter.feed(state, [other])
    diffs.append(float(np.abs(got - _torch_logits(tiny.hf_dir, [*kept_ids, other])).max()))
    got = drafter.feed(state, [5, 9])  # a two-token chunk after the rollback
    diffs.append(float(np.abs(got - _torch_logits(tiny.hf_dir, [*kept_ids, other, 5, 9])).max()))

    print(f"{tiny.family}: max |onnx - torch| = {max(diffs):.2e}")
    assert max(diffs) <= TOL, diffs


@pytest.mark.parametrize("tiny", ["llama", "qwen2", "gpt2"], indirect=True)
def test_manifest_describes_the_graph(tiny: TinyDrafter) -> None:
    from tokenizers import Tokenizer

    from schemas import tokenizer_fingerprint

    m = Manifest.load(tiny.onnx_dir)
    tok = Tokenizer.from_file(str(tiny.onnx_dir / "tokenizer.json"))
    assert m.family == tiny.family
    assert m.fingerprint == tokenizer_fingerprint(tok.get_vocab(with_added_tokens=True))
    assert m.eos_ids == [tok.token_to_id("<|endoftext|>")]
    assert m.dtype == "fp32" and m.opset == 17 and m.num_layers == 2
    assert m.input_names[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert len(m.output_names) == 1 + 2 * m.num_layers
    assert m.export_max_abs_diff < TOL


def test_sync_and_history_rollback(llama_drafter: TinyDrafter) -> None:
    drafter = Drafter(llama_drafter.onnx_dir, threads=1)
    a = drafter.new_state()
    ids = drafter.encode("The quick brown fox jumps over")
    full = drafter.feed(a, ids)
    b = drafter.new_state()
    drafter.feed(b, ids[:2])
    drafter.feed(b, [7, 8, 9])  # a wrong branch
    got = drafter.sync(b, ids)  # keep the common prefix, feed the rest
    assert b.tokens == ids
    np.testing.assert_allclose(got, full, atol=1e-5)
    drafter.rollback(b, 3)
    assert b.next_logits is not None
    expected = drafter.feed(drafter.new_state(), ids[:3])
    assert float(np.abs(b.next_logits - expected).max()) < 1e-5


@pytest.mark.parametrize("variant", ["int8", "fp16"])
def test_small_variants_load_and_draft(variant: str, request: pytest.FixtureRequest) -> None:
    tiny: TinyDrafter = request.getfixturevalue(f"llama_{variant}")
    fp32 = Drafter(request.getfixturevalue("llama_drafter").onnx_dir, threads=1)
    drafter = Drafter(tiny.onnx_dir, threads=1)
    assert drafter.manifest.dtype == variant
    assert drafter.fingerprint == fp32.fingerprint
    assert (tiny.onnx_dir / "model.onnx").stat().st_size < (
        fp32.model_dir / "model.onnx"
    ).stat().st_size
    state = drafter.new_state()
    logits = drafter.feed(state, drafter.encode("In the beginning"))
    for _ in range(5):
        logits = drafter.feed(state, [int(np.argmax(logits))])
    assert logits.shape == (drafter.vocab_size,) and np.isfinite(logits).all()
    ref = drafter.feed(drafter.new_state(), list(state.tokens))
    # cache path ~ full prefill (int8 quantizes activations per call: looser)
    np.testing.assert_allclose(logits, ref, atol=0.15 if variant == "int8" else 1e-3)
