"""How lossless is each dtype? SLED and centralized output against unbatched greedy.

    python -m bench.lossless --json lossless.json

For each dtype (float32, bfloat16, and bfloat16 with a float32 final norm + lm_head) it
decodes the integration tests' prompts (24 random prompts, seed 11, 24 new tokens, the
tests' tiny Llama; ``--bench-model`` adds the ~60M random target of ``sled bench
verifier``) three ways, all with the same weights in that dtype:

* **reference**: target-only greedy, one prompt at a time (``model.generate``, B = 1);
* **SLED**: the verifier's engine (packed batches of up to ``--max-batch`` sessions, slot
  cache, rollbacks) verifying oracle drafts of ``--k`` tokens (the reference's next tokens,
  each replaced by a random one with probability 1 - ``--alpha``);
* **centralized**: the same engine decoding one token per session per round, batched.

and reports, per mode, how many prompts' outputs differ from the reference and where the
first difference is (index of the first differing generated token).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

PROMPTS, PROMPT_SEED, PROMPT_VOCAB, MAX_NEW = 24, 11, 400, 24  # tests/verifier_node


def _prompts() -> list[list[int]]:
    rng = random.Random(PROMPT_SEED)  # tests.verifier_node.helpers.random_prompts
    return [
        [rng.randrange(1, PROMPT_VOCAB) for _ in range(rng.randrange(2, 16))]
        for _ in range(PROMPTS)
    ]


def fp32_head(model: Any) -> Any:
    """Run the final norm and the lm_head in float32 (the rest keeps its dtype)."""
    import torch

    norm = model.model.norm
    norm.float()
    norm.register_forward_pre_hook(lambda _m, args: (args[0].to(torch.float32), *args[1:]))
    model.lm_head.float()
    return model


def _reference(model: Any, prompts: list[list[int]], eos: frozenset[int]) -> list[list[int]]:
    import torch

    out = []
    with torch.inference_mode():
        for p in prompts:
            ids = model.generate(
                torch.tensor([p]),
                attention_mask=torch.ones(1, len(p), dtype=torch.int64),
                max_new_tokens=MAX_NEW,
                do_sample=False,
                eos_token_id=sorted(eos) or None,
                pad_token_id=0,
            )
            out.append(ids[0, len(p) :].tolist())
    return out


def _engine_decode(
    engine: Any, prompts: list[list[int]], truth: list[list[int]], k: int, args: argparse.Namespace
) -> list[list[int]]:
    """SLED rounds (``k`` > 0) or centralized steps (``k`` = 0), batched like the service
    (``args``: ``alpha``, ``max_batch``, ``seed``)."""
    from verifier_node.rows import Row

    alpha, max_batch = args.alpha, args.max_batch
    rng = random.Random(args.seed)
    vocab = engine.runner.vocab_size
    eos = engine.runner.eos_ids
    gen: list[list[int]] = [[] for _ in prompts]
    active = list(range(len(prompts)))
    while active:
        for lo in range(0, len(active), max_batch):
            group = active[lo : lo + max_batch]
            rows = []
            for i in group:
                n = len(gen[i])
                draft = [
                    t if rng.random() < alpha else rng.randrange(vocab)
                    for t in truth[i][n : n + min(k, MAX_NEW - n - 1)]
                ]
                rows.append(Row(("s", i), [*prompts[i], *gen[i]], draft))
            outcomes, _ = engine.run(rows)
            for i, row, out in zip(group, rows, outcomes, strict=True):
                gen[i].extend([*row.draft[: out.accepted], out.token])
                hit = [j for j, t in enumerate(gen[i]) if t in eos]
                gen[i] = gen[i][: hit[0] + 1] if hit else gen[i][:MAX_NEW]
        active = [i for i in active if len(gen[i]) < MAX_NEW and not (eos & set(gen[i]))]
    return gen


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token (a length difference counts), None if equal."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _summary(outs: list[list[int]], truth: list[list[int]]) -> dict[str, Any]:
    firsts = [first_difference(o, t) for o, t in zip(outs, truth, strict=True)]
    where = sorted(f for f in firsts if f is not None)
    return {
        "prompts": len(outs),
        "differ": len(where),
        "first_difference_at": where,
        "first_difference_median": statistics.median(where) if where else None,
        "tokens_compared": sum(len(t) for t in truth),
    }


def measure(model_dir: Path, variant: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    from verifier_node.engine import VerifyEngine
    from verifier_node.runner import TargetRunner

    dtype = torch.float32 if variant == "float32" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa")
    if variant == "bfloat16+fp32_head":
        fp32_head(model)
    model.eval()
    prompts = _prompts()
    runner = TargetRunner(model)
    truth = _reference(model, prompts, runner.eos_ids)
    result: dict[str, Any] = {}
    for mode, k in (("sled", args.k), ("centralized", 0)):
        engine = VerifyEngine(TargetRunner(model))
        outs = _engine_decode(engine, prompts, truth, k, args)
        result[mode] = _summary(outs, truth)
    return result


def run(args: argparse.Namespace) -> int:
    import torch

    from runtime.models import LlamaShape, build_llama, save_tiny_llama

    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="sled-lossless-"))
    models = {"tiny_llama": save_tiny_llama(root / "tiny")}  # the tests' llama
    if args.bench_model:
        shape = LlamaShape(
            vocab_size=32000,
            hidden_size=512,
            intermediate_size=1536,
            num_layers=8,
            num_heads=8,
            max_positions=4096,
        )
        bench = build_llama(shape, seed=0, attn_implementation="sdpa")
        bench.save_pretrained(root / "bench")
        models["bench_60m"] = root / "bench"
    result: dict[str, Any] = {
        "settings": {"k": args.k, "alpha": args.alpha, "max_batch": args.max_batch},
        "models": {},
    }
    for name, path in models.items():
        result["models"][name] = {}
        for variant in ("float32", "bfloat16", "bfloat16+fp32_head"):
            got = measure(path, variant, args)
            result["models"][name][variant] = got
            print(
                f"{name:>10} {variant:>18}: "
                + "  ".join(
                    f"{mode} {g['differ']}/{g['prompts']} differ"
                    f" (first at {g['first_difference_at']})"
                    for mode, g in got.items()
                ),
                flush=True,
            )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.lossless", description=__doc__)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--k", type=int, default=4, help="draft tokens per SLED round")
    parser.add_argument("--alpha", type=float, default=0.8, help="oracle draft acceptance")
    parser.add_argument("--max-batch", type=int, default=8, help="sessions per batch")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bench-model", action="store_true", help="also the ~60M target")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
