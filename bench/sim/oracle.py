"""The oracle setup: a bigger random-weight target and drafts of controlled acceptance.

The demo target (4.2M parameters) is so small that a verifier on two CPU cores spends
almost nothing on it. To measure server-side cost at a more realistic size, the
benchmark builds a Llama of about 55M parameters (hidden 512, 12 layers, 8 heads,
MLP 2048, the demo tokenizer's 4096-token vocabulary) from a config with seeded random
weights (no download), saves it as a normal Hugging Face folder for the verifier, and
replays *oracle* traces (:func:`bench.sim.trace.oracle_trace`): the drafter knows the
target's greedy continuation (computed once per prompt and cached,
:func:`bench.sim.record.greedy_reference`) and proposes each token correctly with
probability alpha.

**bf16.** A random Llama's greedy argmax is fragile: its top-2 logit margins are often
below bf16 rounding, so a bf16 engine's batched output differs from target-only greedy
within a few tokens (measured: 8 of 8 prompts diverge from fp32 greedy within 48 tokens,
first divergence after 0-20 tokens). A *planted* target (``planted=True``) makes the
argmax robust: unit-variance random embeddings and an output head whose rows are the
embeddings of a random permutation (``lm_head[j] = E[perm[j]] / sqrt(hidden)``), with
the layers at their normal init scale, so the next token is the permutation's image
of the last one by a margin of ~``sqrt(hidden)`` logits (~0.7 of the logit range).
Every layer still runs at full cost; only the text is a fixed walk over the vocabulary.
Such a target is token-exact in bf16 against its own fp32 greedy output, which is what
the benchmark's losslessness check compares with (docs/performance.md: *lossless in
bf16*). Its weights are saved in bf16, so fp32 and bf16 read the same numbers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from runtime.models import LlamaShape, build_llama, hf_tokenizer, save_random_llama, special_id


@dataclass(frozen=True, slots=True)
class OracleModel:
    """Shape of the random-weight target. ``weight_scale`` spreads the logits apart."""

    hidden: int = 512
    layers: int = 12
    heads: int = 8
    intermediate: int = 2048
    max_positions: int = 1024
    seed: int = 0
    weight_scale: float = 2.0
    planted: bool = False  # robust argmax for bf16 (module docstring); weights saved in bf16

    def approx_params(self, vocab: int) -> int:
        per_layer = 4 * self.hidden * self.hidden + 3 * self.hidden * self.intermediate
        return self.layers * per_layer + 2 * vocab * self.hidden


def build_oracle_target(spec: OracleModel, tokenizer_json: Path, cache_dir: Path) -> Path:
    """Save the random-weight target (once per spec) and return its folder."""
    tag = "-".join(f"{v}" for v in asdict(spec).values()).replace(".", "p")
    out = Path(cache_dir) / f"oracle-target-{tag}"
    if (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file():
        return out
    shape = LlamaShape(
        vocab_size=0,  # the tokenizer's
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_layers=spec.layers,
        num_heads=spec.heads,
        max_positions=spec.max_positions,
    )
    if spec.planted:
        model = _save_planted(out, shape, tokenizer_json, spec)
    else:
        model = save_random_llama(
            out, shape, tokenizer_json, seed=spec.seed, weight_scale=spec.weight_scale
        )
    (out / "oracle.json").write_text(
        json.dumps({**asdict(spec), "params": sum(p.numel() for p in model.parameters())})
    )
    return out


def _save_planted(out: Path, shape: LlamaShape, tokenizer_json: Path, spec: OracleModel) -> Any:
    """Build, plant (module docstring) and save a bf16 random Llama; return it."""
    import torch

    tokenizer = hf_tokenizer(tokenizer_json)
    shape = replace(shape, vocab_size=len(tokenizer))
    model = build_llama(
        shape, seed=spec.seed, special_id=special_id(tokenizer), weight_scale=spec.weight_scale
    )
    gen = torch.Generator().manual_seed(spec.seed + 1)
    with torch.no_grad():
        emb = model.model.embed_tokens.weight  # [V, H]
        emb.copy_(torch.randn(emb.shape, generator=gen))
        perm = torch.randperm(emb.shape[0], generator=gen)  # [V]
        model.lm_head.weight.copy_(emb[perm] / spec.hidden**0.5)
    model = model.to(torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return model


def oracle_params(model_dir: Path) -> int:
    """Parameter count recorded when the oracle target was built."""
    return int(json.loads((Path(model_dir) / "oracle.json").read_text())["params"])
