"""Tiny random-weight causal LMs with a real tokenizer, for tests.

No weights are downloaded: each model is built from a config with seeded random weights
and saved in the ``save_pretrained`` layout (config, safetensors, tokenizer.json), the
same layout a real Hugging Face model directory has. Llama comes from the one builder in
:mod:`runtime.models`; Qwen2 and GPT-2 are built here. Needs torch + transformers.

    path = make_tiny_model("llama", tmp_path / "llama", vocab_size=512)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from runtime.models import EOS_TOKEN, hf_tokenizer, save_tiny_llama, special_id, tiny_tokenizer

Family = Literal["llama", "qwen2", "gpt2"]

FAMILIES: tuple[Family, ...] = ("llama", "qwen2", "gpt2")
EOS = EOS_TOKEN


def make_tokenizer(path: Path, vocab_size: int = 512) -> Path:
    """Train a byte-level BPE tokenizer (one special token, EOS) and save tokenizer.json."""
    path.mkdir(parents=True, exist_ok=True)
    return tiny_tokenizer(path, vocab_size)


def make_tiny_model(
    family: Family,
    path: Path,
    *,
    vocab_size: int = 512,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int | None = None,
    seed: int = 0,
) -> Path:
    """Save a random-weight model of ``family`` with a matching tokenizer into ``path``."""
    if family == "llama":
        return save_tiny_llama(
            path,
            vocab_size=vocab_size,
            hidden=hidden,
            layers=layers,
            heads=heads,
            kv_heads=kv_heads,
            seed=seed,
        )
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, Qwen2Config

    tokenizer = hf_tokenizer(make_tokenizer(path, vocab_size))
    eos_id = special_id(tokenizer)
    common: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
    }
    config: Qwen2Config | GPT2Config
    if family == "qwen2":
        config = Qwen2Config(
            hidden_size=hidden,
            intermediate_size=hidden * 2,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads or max(1, heads // 2),
            max_position_embeddings=512,
            pad_token_id=eos_id,
            **common,
        )
    else:
        config = GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_positions=512, **common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    # Random init gives near-uniform logits; scale up so argmax is well separated
    # (ties between nearly equal logits would make greedy parity tests flaky).
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name and "ln_" not in name and param.dim() >= 2:
                param.mul_(4.0)
    model.eval()
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
