"""Model folders: EOS ids, tokenizer fingerprint, the one Llama builder."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from runtime.models import EOS_TOKEN, LlamaShape, eos_ids, eos_ids_of, tokenizer_fingerprint_of


@pytest.mark.parametrize(
    ("configs", "expected"),
    [
        ([{"eos_token_id": 2}], [2]),
        ([{"eos_token_id": 2}, {"eos_token_id": [2, 7]}], [2, 7]),  # union, in order found
        ([{"eos_token_id": None}, {}], []),
        ([SimpleNamespace(eos_token_id=[5, 3]), None, {"eos_token_id": 3}], [5, 3]),
        ([{"eos_token_id": ["x", 4]}], [4]),  # non-ints ignored
    ],
)
def test_eos_ids_of(configs: list[Any], expected: list[int]) -> None:
    assert eos_ids_of(configs) == expected


def test_eos_ids_reads_config_then_generation_config(tmp_path: Path) -> None:
    assert eos_ids(tmp_path) == []
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 9}))
    assert eos_ids(tmp_path) == [9]
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 9]}))
    assert eos_ids(tmp_path) == [9, 1]


def test_no_tokenizer_no_fingerprint(tmp_path: Path) -> None:
    assert tokenizer_fingerprint_of(tmp_path) is None


def test_tiny_llama_folder(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from runtime.models import load_causal_lm, save_tiny_llama

    path = save_tiny_llama(tmp_path / "llama", vocab_size=300, hidden=32, layers=1, seed=1)
    fingerprint = tokenizer_fingerprint_of(path)
    assert fingerprint is not None and len(fingerprint) == 16
    model = load_causal_lm(path, threads=1)
    special = json.loads((path / "tokenizer.json").read_text())["added_tokens"][0]
    assert special["content"] == EOS_TOKEN
    assert eos_ids(path) == [special["id"]]
    assert model.config.num_hidden_layers == 1 and model.config.hidden_size == 32
    assert not model.training


def test_build_llama_shape_and_seed() -> None:
    pytest.importorskip("transformers")
    import torch

    from runtime.models import build_llama

    shape = LlamaShape(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2,
                       num_heads=4, num_kv_heads=2, tie_word_embeddings=True)  # fmt: skip
    a = build_llama(shape, seed=0, special_id=3)
    b = build_llama(shape, seed=0, special_id=3)
    assert a.config.num_key_value_heads == 2 and a.config.tie_word_embeddings
    assert a.generation_config.eos_token_id == 3 and a.config.pad_token_id == 3
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    scaled = build_llama(shape, seed=0, weight_scale=2.0)
    w, w2 = a.model.layers[0].mlp.up_proj.weight, scaled.model.layers[0].mlp.up_proj.weight
    assert torch.allclose(w2, 2.0 * w)
    norm = a.model.layers[0].input_layernorm.weight
    assert torch.equal(norm, scaled.model.layers[0].input_layernorm.weight)


def test_eos_ids_add_the_tokenizers_end_of_turn_token(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 0}))
    tokenizer = {
        "added_tokens": [
            {"id": 0, "content": "<|endoftext|>"},
            {"id": 2, "content": "<|im_end|>"},
        ],
        "model": {"vocab": {"<|endoftext|>": 0, "<|im_end|>": 2, "</s>": 7}},
    }
    (tmp_path / "tokenizer.json").write_text(json.dumps(tokenizer))
    config = tmp_path / "tokenizer_config.json"
    config.write_text(json.dumps({"eos_token": "<|im_end|>"}))
    assert eos_ids(tmp_path) == [0, 2]  # configs first, then the end-of-turn token
    config.write_text(json.dumps({"eos_token": {"content": "</s>", "lstrip": False}}))
    assert eos_ids(tmp_path) == [0, 7]  # AddedToken form, found in the vocabulary
    config.write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    assert eos_ids(tmp_path) == [0]  # already there: no duplicate
    config.write_text(json.dumps({"eos_token": "<none>"}))
    assert eos_ids(tmp_path) == [0]  # not in the tokenizer: ignored
    (tmp_path / "tokenizer.json").unlink()
    config.write_text(json.dumps({"eos_token": "<|im_end|>"}))
    assert eos_ids(tmp_path) == [0]  # no tokenizer.json: configs only
