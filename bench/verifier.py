"""Verifier benchmark: verify-round wall time vs the target forward, and centralized tokens/s.

    sled bench verifier --json verifier.json            (via sled.cli)
    python -m bench.verifier --json verifier.json       (directly)

For each batch size (default 1, 4, 8, 16) it runs verification rounds of ``--k`` draft
tokens per session on a random-config Llama target (default ~60M parameters; or a
local model with ``--model-dir``), through the real :class:`VerifyEngine` (slot KV
cache, batched forward, verification math), and reports per round:

* ``round_ms``  – the whole round (cache bookkeeping, inputs, forward, verification);
* ``forward_ms`` – the target's forward call inside it;
* ``forward_fraction`` – their ratio (the rest is the verifier's own overhead);
* ``reference_forward_ms`` – a plain transformers forward of the same shape over a
  contiguous ``DynamicCache`` (what the forward costs without the slot cache).

``subset_8_of_16`` runs batches of 8 of 16 resident sessions (every other slot), the
case where the batch's KV rows are gathered (copied) instead of read as a view.

Then centralized mode (one token per session per round, continuous batching) at the
same batch sizes, as decode tokens per second (batch / median step time). Times are
medians over ``--rounds``, so a busy machine disturbs them less.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--batches", default="1,4,8,16", help="batch sizes, comma separated")
    parser.add_argument("--rounds", type=int, default=12, help="measured rounds per batch size")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured rounds first")
    parser.add_argument("--k", type=int, default=4, help="draft tokens per session per round")
    parser.add_argument("--prompt-len", type=int, default=128, help="prompt tokens per session")
    parser.add_argument(
        "--sampling", action="store_true", help="speculative sampling (default: greedy)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--model-dir", default=None, help="a local model instead of random")
    parser.add_argument("--hidden", type=int, default=512, help="random target: hidden size")
    parser.add_argument("--layers", type=int, default=8, help="random target: layers")
    parser.add_argument("--vocab", type=int, default=32000, help="random target: vocabulary")
    parser.add_argument("--central-tokens", type=int, default=16, help="measured steps")
    parser.add_argument("--seed", type=int, default=0)


def _random_target(hidden: int, layers: int, vocab: int, seed: int) -> Any:
    from runtime.models import LlamaShape, build_llama

    heads = max(1, hidden // 64)
    shape = LlamaShape(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_layers=layers,
        num_heads=heads,
        max_positions=4096,
    )
    return build_llama(shape, seed=seed, attn_implementation="sdpa")


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else 0.0


def _round_times(round_ms: list[float], forward_ms: list[float]) -> dict[str, float]:
    """Median round and forward time (ms) and the forward's share of the round."""
    round_med, forward_med = _median(round_ms), _median(forward_ms)
    return {
        "round_ms": round(round_med, 3),
        "forward_ms": round(forward_med, 3),
        "forward_fraction": round(forward_med / round_med, 4) if round_med else 0.0,
    }


def _bench_verify(model: Any, batch: int, args: argparse.Namespace) -> dict[str, float]:
    from schemas import SamplingParams
    from verifier_node.engine import VerifyEngine
    from verifier_node.rows import Row
    from verifier_node.runner import TargetRunner

    rng = random.Random(args.seed + batch)
    vocab = model.config.vocab_size
    engine = VerifyEngine(TargetRunner(model))
    params = (
        SamplingParams(temperature=0.8, top_k=50, top_p=0.95) if args.sampling else SamplingParams()
    )
    contexts = [[rng.randrange(vocab) for _ in range(args.prompt_len)] for _ in range(batch)]
    rounds: list[tuple[float, float, float, float]] = []
    for r in range(args.warmup + args.rounds):
        items = [
            Row(
                key=b,
                context=contexts[b],
                draft=[rng.randrange(vocab) for _ in range(args.k)],
                params=params,
                seed=r * 1000 + b,
            )
            for b in range(batch)
        ]
        results, m = engine.run(items)
        for b, (item, res) in enumerate(zip(items, results, strict=True)):
            contexts[b] = [*contexts[b], *item.draft[: res.accepted], res.token]
        if r >= args.warmup:
            rounds.append((m.round_ms, m.forward.forward_ms, m.forward.prepare_ms, m.verify_ms))
    return {
        **_round_times([x[0] for x in rounds], [x[1] for x in rounds]),
        "prepare_ms": round(_median([x[2] for x in rounds]), 3),
        "verify_ms": round(_median([x[3] for x in rounds]), 3),
        "reference_forward_ms": round(_reference_forward_ms(model, batch, args), 3),
    }


def _bench_subset(model: Any, args: argparse.Namespace, resident: int = 16) -> dict[str, float]:
    """Batches of half the resident sessions, every other slot: the gather (copy) path."""
    from verifier_node.engine import VerifyEngine
    from verifier_node.rows import Row
    from verifier_node.runner import TargetRunner

    rng = random.Random(args.seed + 99)
    vocab = model.config.vocab_size
    runner = TargetRunner(model)
    engine = VerifyEngine(runner)
    contexts = [[rng.randrange(vocab) for _ in range(args.prompt_len)] for _ in range(resident)]

    def round_(keys: list[int]) -> tuple[float, float, int]:
        before = runner.cache.copied_bytes
        items = [Row(b, contexts[b], [rng.randrange(vocab) for _ in range(args.k)]) for b in keys]
        results, m = engine.run(items)
        for b, item, res in zip(keys, items, results, strict=True):
            contexts[b] = [*contexts[b], *item.draft[: res.accepted], res.token]
        return m.round_ms, m.forward.forward_ms, runner.cache.copied_bytes - before

    round_(list(range(resident)))  # everyone resident, slots 0..resident-1
    rows = []
    for r in range(args.warmup + args.rounds):
        got = round_(list(range(r % 2, resident, 2)))  # even or odd slots
        if r >= args.warmup:
            rows.append(got)
    return {
        **_round_times([x[0] for x in rows], [x[1] for x in rows]),
        "gather_mb_per_round": round(_median([x[2] for x in rows]) / 2**20, 3),
    }


def _reference_forward_ms(model: Any, batch: int, args: argparse.Namespace) -> float:
    """A plain forward of [batch, k+1] new tokens over a contiguous DynamicCache."""
    import torch
    from transformers import DynamicCache

    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(args.seed)
    prompt = torch.randint(vocab, (batch, args.prompt_len), generator=gen)
    times = []
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        model(input_ids=prompt, cache=cache, use_cache=True, logits_to_keep=1)
        for r in range(args.warmup + args.rounds):
            new = torch.randint(vocab, (batch, args.k + 1), generator=gen)
            t0 = time.perf_counter()
            model(input_ids=new, cache=cache, use_cache=True)
            dt = (time.perf_counter() - t0) * 1e3
            cache.crop(-args.k)  # keep one token per round, like a round that accepts none
            if r >= args.warmup:
                times.append(dt)
    return _median(times)


def _bench_centralized(model: Any, batch: int, args: argparse.Namespace) -> float:
    """Decode tokens per second of centralized mode (after the prompts are prefilled)."""
    from verifier_node.engine import VerifyEngine
    from verifier_node.rows import Row
    from verifier_node.runner import TargetRunner

    rng = random.Random(args.seed + 7 * batch)
    vocab = model.config.vocab_size
    engine = VerifyEngine(TargetRunner(model))
    contexts = [[rng.randrange(vocab) for _ in range(args.prompt_len)] for _ in range(batch)]

    def step() -> float:
        t0 = time.perf_counter()
        results, _ = engine.run([Row(b, contexts[b], ()) for b in range(batch)])
        for b, res in enumerate(results):
            contexts[b] = [*contexts[b], res.token]
        return time.perf_counter() - t0

    for _ in range(2):  # prefill + warm up
        step()
    # The median step: robust to other processes stealing the CPU now and then.
    step_s = _median([step() for _ in range(args.central_tokens)])
    return batch / step_s


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from verifier_node.runner import TargetRunner, configure_torch

    configure_torch(args.threads)
    if args.model_dir:
        model = TargetRunner.load(args.model_dir, threads=args.threads).model
    else:
        model = _random_target(args.hidden, args.layers, args.vocab, args.seed)
    num_params = sum(p.numel() for p in model.parameters())
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    result: dict[str, Any] = {
        "model": {
            "params": num_params,
            "source": args.model_dir or "random llama",
            "layers": model.config.num_hidden_layers,
            "hidden": model.config.hidden_size,
            "vocab": model.config.vocab_size,
        },
        "settings": {
            "k": args.k,
            "prompt_len": args.prompt_len,
            "rounds": args.rounds,
            "threads": args.threads,
            "sampling": args.sampling,
        },
        "batches": {},
        "centralized_tokens_per_s": {},
    }
    print(f"target: {num_params / 1e6:.1f}M parameters, k={args.k}, threads={args.threads}")
    for batch in batches:
        row = _bench_verify(model, batch, args)
        result["batches"][str(batch)] = row
        print(
            f"batch {batch:>3}: round {row['round_ms']:8.2f} ms"
            f"  forward {row['forward_ms']:8.2f} ms"
            f"  ({100 * row['forward_fraction']:.1f} %)  reference forward "
            f"{row['reference_forward_ms']:8.2f} ms",
            flush=True,
        )
    subset = _bench_subset(model, args)
    result["subset_8_of_16"] = subset
    print(
        f"batch 8 of 16 resident (gather path): round {subset['round_ms']:8.2f} ms"
        f"  forward {subset['forward_ms']:8.2f} ms ({100 * subset['forward_fraction']:.1f} %)"
        f"  gathered {subset['gather_mb_per_round']:.1f} MiB per round",
        flush=True,
    )
    for batch in batches:
        tps = _bench_centralized(model, batch, args)
        result["centralized_tokens_per_s"][str(batch)] = round(tps, 2)
        print(f"centralized batch {batch:>3}: {tps:8.1f} tokens/s", flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.verifier", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
