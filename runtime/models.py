"""Model folders: EOS ids, tokenizer fingerprint, loading, and the one Llama builder.

A *model folder* is the Hugging Face ``save_pretrained`` layout: ``config.json``,
weights, optionally ``generation_config.json``, and ``tokenizer.json``. Every part of
the project that reads one (edge export, verifier, demo, benchmarks) asks here.

torch, transformers and tokenizers are imported inside the functions that need them, so
importing this module is cheap and has no side effects (the edge install has no torch).

    ids = eos_ids(model_dir)                      # [2] for the demo models
    model = build_llama(LlamaShape(vocab_size=512, hidden_size=64, intermediate_size=128,
                                   num_layers=2, num_heads=4), special_id=0, seed=0)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas import tokenizer_fingerprint

EOS_TOKEN = "<|endoftext|>"
"""The only special token of the project's own tokenizers: bos, eos, pad and unk."""

TINY_CORPUS = (
    "In the beginning God created the heaven and the earth.",
    "And the earth was without form, and void; and darkness was upon the face of the deep.",
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the sun.",
    "Speculative decoding drafts tokens with a small model and verifies them with a large one.",
    "Edge devices send token ids over MQTT to a shared verifier node.",
    "Numbers 0123456789 and punctuation: ; , . ! ? ( ) [ ] { } - + = / \\ ' \" are tokens too.",
)
"""Text for the tiny tokenizer of random-weight smoke and test models."""


# --------------------------------------------------------------------------- EOS ids


def eos_ids_of(configs: Iterable[Any]) -> list[int]:
    """The union of ``eos_token_id`` over ``configs`` (objects or dicts), in order found.

    Each value may be missing, one id or a list of ids.
    """
    found: list[int] = []
    for config in configs:
        if config is None:
            continue
        if isinstance(config, Mapping):
            value = config.get("eos_token_id")
        else:
            value = getattr(config, "eos_token_id", None)
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, int) and v not in found:
                found.append(v)
    return found


def eos_ids(model_dir: str | Path) -> list[int]:
    """EOS ids of a model folder: ``config.json``, ``generation_config.json``, then the
    tokenizer's own EOS token (``tokenizer_config.json``'s ``eos_token``).

    The last is an instruct model's end-of-turn token (SmolLM2's ``<|im_end|>``, Qwen2's
    ``<|im_end|>``, Llama 3's ``<|eot_id|>``), where a chat answer stops even when the
    model configs name only the end-of-text token. The edge export (the drafter's
    manifest), the verifier and the reference decoding all take their EOS ids here, so
    they stop at the same token.
    """
    docs = []
    for name in ("config.json", "generation_config.json"):
        path = Path(model_dir) / name
        if path.is_file():
            docs.append(json.loads(path.read_text()))
    found = eos_ids_of(docs)
    end_of_turn = _eos_token_id(Path(model_dir))
    if end_of_turn is not None and end_of_turn not in found:
        found.append(end_of_turn)
    return found


def _eos_token_id(model_dir: Path) -> int | None:
    """The id of ``tokenizer_config.json``'s ``eos_token`` in ``tokenizer.json``."""
    config_path, tokenizer_path = model_dir / "tokenizer_config.json", model_dir / "tokenizer.json"
    if not (config_path.is_file() and tokenizer_path.is_file()):
        return None
    token = json.loads(config_path.read_text()).get("eos_token")
    if isinstance(token, dict):  # AddedToken form: {"content": "</s>", ...}
        token = token.get("content")
    if not isinstance(token, str):
        return None
    tokenizer = json.loads(tokenizer_path.read_text())
    for added in tokenizer.get("added_tokens") or []:
        if added.get("content") == token and isinstance(added.get("id"), int):
            return int(added["id"])
    vocab = (tokenizer.get("model") or {}).get("vocab")
    token_id = vocab.get(token) if isinstance(vocab, dict) else None
    return token_id if isinstance(token_id, int) else None


# --------------------------------------------------------------------------- tokenizer


def tokenizer_fingerprint_of(model_dir: str | Path) -> str | None:
    """Fingerprint of the folder's ``tokenizer.json`` (None when there is none)."""
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    return tokenizer_fingerprint(Tokenizer.from_file(str(path)).get_vocab(with_added_tokens=True))


def train_bpe_tokenizer(texts: Sequence[str], path: Path, vocab_size: int) -> Path:
    """Train a byte-level BPE on ``texts`` with one special token (:data:`EOS_TOKEN`)
    and save it as ``path`` (a ``tokenizer.json`` file); returns ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def tiny_tokenizer(path: Path, vocab_size: int = 512) -> Path:
    """Train the tiny BPE tokenizer (on :data:`TINY_CORPUS`) into ``path/tokenizer.json``."""
    return train_bpe_tokenizer(list(TINY_CORPUS) * 20, path / "tokenizer.json", vocab_size)


def hf_tokenizer(tokenizer_json: Path, **kwargs: Any) -> Any:
    """A transformers ``PreTrainedTokenizerFast`` over ``tokenizer_json`` with
    :data:`EOS_TOKEN` as bos, eos, pad and unk token (``kwargs`` passed on)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_json),
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        **kwargs,
    )


def special_id(tokenizer: Any) -> int:
    """The id of :data:`EOS_TOKEN` in a transformers tokenizer."""
    value = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    assert isinstance(value, int)
    return value


# --------------------------------------------------------------------------- loading


def load_causal_lm(
    model_dir: str | Path,
    *,
    threads: int | None = None,
    attn_implementation: str | None = None,
) -> Any:
    """A local causal LM in float32, eval mode, never from the network.

    ``threads`` sets torch's intra-op thread count first when given.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM

    if threads is not None:
        torch.set_num_threads(max(1, threads))
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=torch.float32, local_files_only=True, **extra
    )
    return model.eval()


# --------------------------------------------------------------------------- Llama


@dataclass(frozen=True)
class LlamaShape:
    """Shape of one Llama model (all sizes in elements)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int | None = None  # None: as many as num_heads
    max_positions: int = 512
    tie_word_embeddings: bool = False


def build_llama(
    shape: LlamaShape,
    *,
    seed: int,
    special_id: int | None = None,
    weight_scale: float = 1.0,
    attn_implementation: str | None = None,
) -> Any:
    """A freshly initialised fp32 ``LlamaForCausalLM`` of ``shape``, seeded by ``seed``.

    ``special_id``: the bos/eos/pad id (model and generation config); None keeps the
    transformers defaults. ``weight_scale`` multiplies every matrix but the norms after
    init: random init gives near-uniform logits, so tests scale up to keep greedy
    argmax well separated (ties between nearly equal logits make parity tests flaky).
    """
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    ids: dict[str, Any] = {}
    if special_id is not None:
        ids = {"bos_token_id": special_id, "eos_token_id": special_id, "pad_token_id": special_id}
    same_names = ("vocab_size", "hidden_size", "intermediate_size", "tie_word_embeddings")
    config = LlamaConfig(
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads or shape.num_heads,
        max_position_embeddings=shape.max_positions,
        **{name: getattr(shape, name) for name in same_names},
        **ids,
    )
    torch.manual_seed(seed)
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForCausalLM.from_config(config, **extra)
    for key, value in ids.items():
        setattr(model.generation_config, key, value)
    if weight_scale != 1.0:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "norm" not in name and param.dim() >= 2:
                    param.mul_(weight_scale)
    return model.eval()


def save_random_llama(
    path: Path,
    shape: LlamaShape,
    tokenizer_json: Path,
    *,
    seed: int,
    weight_scale: float = 1.0,
) -> Any:
    """Build a random Llama over the tokenizer in ``tokenizer_json`` (its vocabulary
    size replaces ``shape.vocab_size``) and save both into the model folder ``path``.
    Returns the model."""
    from dataclasses import replace

    tokenizer = hf_tokenizer(tokenizer_json)
    shape = replace(shape, vocab_size=len(tokenizer))
    model = build_llama(
        shape, seed=seed, special_id=special_id(tokenizer), weight_scale=weight_scale
    )
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return model


def save_tiny_llama(
    path: Path,
    *,
    vocab_size: int = 512,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int | None = None,
    seed: int = 0,
) -> Path:
    """A tiny random-weight Llama with the tiny tokenizer, saved into ``path``.

    Weights are scaled by 4 so greedy argmax is well separated. Returns ``path``.
    """
    # vocab, hidden, MLP, layers, heads, kv heads
    shape = LlamaShape(vocab_size, hidden, hidden * 2, layers, heads, kv_heads)
    tokenizer_json = tiny_tokenizer(path, vocab_size)
    save_random_llama(path, shape, tokenizer_json, seed=seed, weight_scale=4.0)
    return path
