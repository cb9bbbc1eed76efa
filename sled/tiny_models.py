"""Tiny random-weight causal LMs with a real tokenizer, for tests and timing benchmarks.

No weights are downloaded: each model is built from a config with seeded random weights
and saved in the ``save_pretrained`` layout (config, safetensors, tokenizer.json), the
same layout a real Hugging Face model directory has. Needs torch + transformers.

    path = make_tiny_model("llama", tmp_path / "llama", vocab_size=512)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

Family = Literal["llama", "qwen2", "gpt2"]

FAMILIES: tuple[Family, ...] = ("llama", "qwen2", "gpt2")
EOS = "<|endoftext|>"

_CORPUS = [
    "In the beginning God created the heaven and the earth.",
    "And the earth was without form, and void; and darkness was upon the face of the deep.",
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the sun.",
    "Speculative decoding drafts tokens with a small model and verifies them with a large one.",
    "Edge devices send token ids over MQTT to a shared verifier node.",
    "Numbers 0123456789 and punctuation: ; , . ! ? ( ) [ ] { } - + = / \\ ' \" are tokens too.",
]


def make_tokenizer(path: Path, vocab_size: int = 512) -> Path:
    """Train a byte-level BPE tokenizer (one special token, EOS) and save tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 20, trainer=trainer)
    path.mkdir(parents=True, exist_ok=True)
    out = path / "tokenizer.json"
    tok.save(str(out))
    return out


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
    import torch
    from transformers import (
        AutoModelForCausalLM,
        GPT2Config,
        LlamaConfig,
        PreTrainedTokenizerFast,
        Qwen2Config,
    )

    make_tokenizer(path, vocab_size)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(path / "tokenizer.json"),
        eos_token=EOS,
        bos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
    )
    actual_vocab = len(tokenizer)
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    assert isinstance(eos_id, int)
    common: dict[str, Any] = {
        "vocab_size": actual_vocab,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
    }
    config: LlamaConfig | Qwen2Config | GPT2Config
    if family == "llama":
        config = LlamaConfig(
            hidden_size=hidden,
            intermediate_size=hidden * 2,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads or heads,
            max_position_embeddings=512,
            pad_token_id=eos_id,
            **common,
        )
    elif family == "qwen2":
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
    elif family == "gpt2":
        config = GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_positions=512, **common)
    else:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
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
