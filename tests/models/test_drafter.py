"""The drafter's design: built from the target, only its own layers stored, reassembled
on the target's embeddings, exported to ONNX (on the tiny GGUF model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sled.models import drafter as drafter_mod
from sled.models.acceptance import onnx_argmax, torch_argmax
from sled.models.drafter import (
    WEIGHTS_FILE,
    assemble,
    build_drafter,
    ensure_drafter,
    load_drafter,
    own_state,
    save_own,
)
from sled.models.store import Entry, read_entry

torch = pytest.importorskip("torch")


def _target(entry: Entry):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(entry.target), dtype=torch.float32).eval()


def test_built_from_the_targets_layers(tiny_entry: Entry) -> None:
    target = _target(tiny_entry)
    drafter = build_drafter(target, [1])
    assert drafter.config.num_hidden_layers == 1
    assert torch.equal(drafter.model.embed_tokens.weight, target.model.embed_tokens.weight)
    assert drafter.lm_head.weight.data_ptr() == drafter.model.embed_tokens.weight.data_ptr()
    for name, value in drafter.model.layers[0].state_dict().items():
        assert torch.equal(value, target.model.layers[1].state_dict()[name]), name
    own = own_state(drafter)
    assert not any(k.startswith(("model.embed_tokens", "lm_head")) for k in own)
    assert "model.norm.weight" in own and "model.layers.0.mlp.up_proj.weight" in own


def test_own_layers_reassemble_to_the_same_drafter(tiny_entry: Entry, tmp_path: Path) -> None:
    target = _target(tiny_entry)
    drafter = build_drafter(target, [0, 1])
    with torch.no_grad():  # fp16 storage: make the weights fp16-exact first
        for value in own_state(drafter).values():
            value.copy_(value.half().float())
    save_own(drafter, tmp_path / "own", {"layers": [0, 1]})
    again = load_drafter(tiny_entry.target, tmp_path / "own")
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        assert torch.allclose(again(ids).logits, drafter(ids).logits, atol=1e-5)
    hf = assemble(tiny_entry.target, tmp_path / "own", tmp_path / "hf", progress=lambda _: None)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (hf / name).is_file(), name


def test_ensure_drafter_exports_onnx_once(
    tiny_entry: Entry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime")
    import shutil

    entry_dir = tmp_path / tiny_entry.name
    shutil.copytree(tiny_entry.path, entry_dir)
    entry = read_entry(entry_dir)
    assert entry is not None
    assert ensure_drafter(entry) == entry  # no drafter named: nothing to do
    repo = tmp_path / "repo"
    save_own(build_drafter(_target(entry), [0]), repo / "tiny", {"layers": [0]})
    assert (repo / "tiny" / WEIGHTS_FILE).is_file()
    monkeypatch.setattr(drafter_mod, "DRAFTERS_DIR", repo)
    entry = Entry(entry.name, entry.path, entry.facts | {"drafter": "tiny"})
    lines: list[str] = []
    done = ensure_drafter(entry, progress=lines.append)
    for dtype in ("fp32", "int8"):
        out = Path(done.facts["drafter_onnx"][dtype])
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["dtype"] == dtype and manifest["num_layers"] == 1
        assert manifest["eos_ids"] == [2]
    assert read_entry(entry_dir) == done  # recorded in the marker
    # the edge runtime's view of the fp32 export drafts what torch drafts
    fp32 = onnx_argmax(Path(done.facts["drafter_onnx"]["fp32"]))
    reference = torch_argmax(load_drafter(entry.target, repo / "tiny"))
    prompt, reply = [1, 40, 41, 42], [43, 44, 45, 2]
    assert fp32(prompt, reply) == reference(prompt, reply)
    assert ensure_drafter(done, progress=lines.append) == done  # once
    save_own(build_drafter(_target(entry), [1]), repo / "tiny", {"layers": [1]})
    redone = ensure_drafter(done, progress=lines.append)  # new weights: built again
    assert redone.facts["drafter_sha256"] != done.facts["drafter_sha256"]
