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

from bench.sim.record import EOS_TOKEN


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
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_json),
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
    )
    eos_id = int(tokenizer.convert_tokens_to_ids(EOS_TOKEN))  # type: ignore[arg-type]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        max_position_embeddings=spec.max_positions,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name and param.dim() >= 2:
                param.mul_(spec.weight_scale)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "oracle.json").write_text(
        json.dumps({**asdict(spec), "params": sum(p.numel() for p in model.parameters())})
    )
    return out


def oracle_params(model_dir: Path) -> int:
    """Parameter count recorded when the oracle target was built."""
    return int(json.loads((Path(model_dir) / "oracle.json").read_text())["params"])
