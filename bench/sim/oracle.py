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
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from runtime.models import LlamaShape, save_random_llama


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
    model = save_random_llama(
        out, shape, tokenizer_json, seed=spec.seed, weight_scale=spec.weight_scale
    )
    (out / "oracle.json").write_text(
        json.dumps({**asdict(spec), "params": sum(p.numel() for p in model.parameters())})
    )
    return out


def oracle_params(model_dir: Path) -> int:
    """Parameter count recorded when the oracle target was built."""
    return int(json.loads((Path(model_dir) / "oracle.json").read_text())["params"])
