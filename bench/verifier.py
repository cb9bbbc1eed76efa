"""Verifier benchmark: the engine's verify round against the hardware's limit.

    sled bench verifier --json verifier.json            (via sled.cli)
    sled bench verifier --quick --json quick.json        (a few seconds: keys, not figures)
    python -m bench.verifier --device cuda --dtypes bfloat16 --json gpu.json
    python -m bench.verifier --device cuda --dtypes bfloat16 --preset llama3-8b --cuda-graphs

On a random-config Llama target (default ~60M parameters; or ``--model-dir``), for each
dtype (default both float32 and bfloat16), batch size ``B`` (1, 4, 8, 16, 32) and draft
length ``k`` (0, 4, 8), three things are timed *interleaved round by round* — the
product's :class:`VerifyEngine` round with ``k`` drafts per row, a plain transformers
forward of the same shapes (``[B, k+1]`` new tokens over a contiguous ``DynamicCache``),
and the engine's decode step (``k = 0``, the centralized baseline on the same engine) —
in an order that alternates every round, ``--repeats`` times. A machine whose speed
drifts moves all three alike, so their per-round *ratios* are reported as medians with
their spread (first and third quartile); times are medians with ``[min, max]``.

Keys (``D`` a dtype name, ``B`` a batch size, ``k`` a draft length):

* ``dtypes.D.batches.B.decode_ms`` – the engine's decode step (``k = 0``), ms;
* ``dtypes.D.batches.B.kK.round_ms`` – the engine's verify round, ms (``_spread``: min, max);
* ``….kK.forward_fraction`` – the model call's share of the engine round (median);
* ``….kK.reference_ms`` – the plain forward of the same shapes, ms;
* ``….kK.vs_reference`` – engine round / plain forward, per round, median
  (``vs_reference_spread``: quartiles);
* ``….kK.vs_decode`` – ``t_v / t_d``: verify round / decode step, per round, median;
* ``….kK.limit.A`` – the server-bound WSTGR limit ``E / (t_v / t_d)`` for per-token
  acceptance ``A`` in 0.6, 0.8, 0.9, with ``E = (1 - A^(k+1)) / (1 - A)``;
* ``dtypes.D.mixed_vs_padded`` – at B = 16, a batch whose ``k`` is drawn uniformly from
  0..8 every round against the same batch padded to its longest draft, over 3 x
  ``--repeats`` rounds (``mixed``: both times and the token counts);
* ``dtypes.D.mixed.linear_floor`` – the same ratio for the model's linear layers alone
  (every ``nn.Linear``, the output head included, on as many tokens as each round
  verifies), timed in the same rounds: what packing can reach on this hardware when
  attention and per-layer overheads cost nothing (``linear_floor_spread``: quartiles);
* ``dtypes.D.centralized_tokens_per_s.B`` – ``B / decode step``;
* ``dtype_default``, and ``batches`` / ``mixed_vs_padded`` copied from it at top level.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runtime.threads import set_omp_wait

ALPHAS = (0.6, 0.8, 0.9)
MIXED_BATCH = 16
MIXED_MAX_K = 8
MIXED_ROUNDS_PER_REPEAT = 3  # one batch, cheap: more rounds, a steadier median


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--batches", default="1,4,8,16,32", help="batch sizes, comma separated")
    parser.add_argument("--ks", default="0,4,8", help="draft lengths, comma separated")
    parser.add_argument(
        "--dtypes", default="float32,bfloat16", help="dtypes, comma separated (auto allowed)"
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:N")
    parser.add_argument("--repeats", type=int, default=7, help="measured interleaved rounds")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured rounds first")
    parser.add_argument("--prompt-len", type=int, default=128, help="prompt tokens per session")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--model-dir", default=None, help="a local model instead of random")
    parser.add_argument("--hidden", type=int, default=512, help="random target: hidden size")
    parser.add_argument("--layers", type=int, default=8, help="random target: layers")
    parser.add_argument("--vocab", type=int, default=32000, help="random target: vocabulary")
    parser.add_argument(
        "--intermediate", type=int, default=0, help="random target: MLP size (0: 3 x hidden)"
    )
    parser.add_argument(
        "--heads", type=int, default=0, help="random target: heads (0: hidden / 64)"
    )
    parser.add_argument(
        "--kv-heads", type=int, default=0, help="random target: KV heads (0: one per head)"
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="a random target of a known shape (overrides the sizes above)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="the engine replays CUDA graphs of its static-shape steps (CUDA only)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a tiny target, B 1,4, k 0,2: seconds (for tests)"
    )


PRESETS = {  # random targets of real models' shapes, built from a config (no download)
    "llama3-8b": {
        "hidden": 4096,
        "layers": 32,
        "vocab": 128256,
        "intermediate": 14336,
        "heads": 32,
        "kv_heads": 8,
    },
}

QUICK = {
    "batches": "1,4",
    "ks": "0,2",
    "repeats": 2,
    "warmup": 1,
    "prompt_len": 16,
    "hidden": 64,
    "layers": 2,
    "vocab": 512,
}


def apply_presets(args: argparse.Namespace) -> argparse.Namespace:
    """``--quick`` and ``--preset`` settings, over the command line's."""
    settings = {**(QUICK if args.quick else {}), **PRESETS.get(args.preset or "", {})}
    for name, value in settings.items():
        setattr(args, name, value)
    return args


def target_shape(args: argparse.Namespace) -> Any:  # runtime.models.LlamaShape
    """The random target's shape."""
    from runtime.models import LlamaShape

    return LlamaShape(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate or args.hidden * 3,
        num_layers=args.layers,
        num_heads=args.heads or max(1, args.hidden // 64),
        num_kv_heads=args.kv_heads or None,
        max_positions=4096,
    )


def _random_target(args: argparse.Namespace, dtype: Any, device: Any) -> Any:
    import torch

    from runtime.models import build_llama

    shape = target_shape(args)
    if getattr(device, "type", "cpu") != "cuda":  # fp32 init on CPU, then cast
        model = build_llama(shape, seed=args.seed, attn_implementation="sdpa")
        return model.to(device=device, dtype=dtype)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # an 8B target: initialised in its dtype, on the GPU
    try:
        with torch.device(device):
            model = build_llama(shape, seed=args.seed, attn_implementation="sdpa")
    finally:
        torch.set_default_dtype(default)
    return model.to(device=device, dtype=dtype)


def _quartiles(xs: list[float]) -> list[float]:
    if len(xs) < 2:
        return [xs[0], xs[0]] if xs else [0.0, 0.0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return [round(q[0], 4), round(q[2], 4)]


def _times(xs: list[float]) -> tuple[float, list[float]]:
    """Median (ms) and [min, max]."""
    return round(statistics.median(xs), 3), [round(min(xs), 3), round(max(xs), 3)]


def expected_tokens(alpha: float, k: int) -> float:
    """Tokens per round with per-token acceptance ``alpha`` and ``k`` drafts."""
    return float(k + 1) if alpha == 1.0 else (1 - alpha ** (k + 1)) / (1 - alpha)


class EngineSessions:
    """``batch`` engine sessions growing by their verdicts; one verify round at a time."""

    def __init__(self, engine: Any, name: str, contexts: list[list[int]], vocab: int) -> None:
        self.engine, self.name, self.contexts, self.vocab = engine, name, contexts, vocab
        self.rng = random.Random(name)
        self.forward_fractions: list[float] = []  # the model call's share of each round

    def round(self, ks: list[int]) -> float:
        """One round with ``ks[b]`` random drafts for row ``b``; its wall time (ms)."""
        from verifier_node.rows import Row

        rows = [
            Row((self.name, b), ctx, [self.rng.randrange(self.vocab) for _ in range(k)])
            for b, (ctx, k) in enumerate(zip(self.contexts, ks, strict=True))
        ]
        sync = _synchronizer(self.engine.runner.device)
        t0 = time.perf_counter()
        outcomes, metrics = self.engine.run(rows)  # (accepted, token) reach the host
        sync()
        dt = (time.perf_counter() - t0) * 1e3
        self.forward_fractions.append(metrics.forward.forward_ms / dt)
        for row, ctx, out in zip(rows, self.contexts, outcomes, strict=True):
            ctx.extend([*row.draft[: out.accepted], out.token])
        return dt


class _Plain:
    """A plain transformers forward of ``[batch, k+1]`` tokens over a ``DynamicCache``."""

    def __init__(self, model: Any, prompts: Any) -> None:
        import torch
        from transformers import DynamicCache

        self.model, self.batch = model, prompts.shape[0]
        self.device = prompts.device
        self.cache = DynamicCache(config=model.config)
        self.gen = torch.Generator().manual_seed(1)
        with torch.inference_mode():
            model(input_ids=prompts, cache=self.cache, use_cache=True, logits_to_keep=1)

    def round(self, k: int) -> float:
        import torch

        vocab = self.model.config.vocab_size
        new = torch.randint(vocab, (self.batch, k + 1), generator=self.gen).to(self.device)
        sync = _synchronizer(self.device)
        with torch.inference_mode():
            t0 = time.perf_counter()
            self.model(input_ids=new, cache=self.cache, use_cache=True)
            sync()
            dt = (time.perf_counter() - t0) * 1e3
        # keep one token per round, like the engine's rounds that accept no draft
        if k:
            self.cache.crop(-k)
        return dt


def _synchronizer(device: Any) -> Callable[[], None]:
    import torch

    if getattr(device, "type", "cpu") == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _bench_batch(model: Any, batch: int, ks: list[int], args: argparse.Namespace) -> dict:
    """Engine round, plain forward and decode step per k, interleaved round by round."""
    import torch

    from verifier_node.engine import VerifyEngine
    from verifier_node.runner import TargetRunner

    vocab = model.config.vocab_size
    runner = TargetRunner(model, kv_budget_bytes=8 << 30, cuda_graphs=args.cuda_graphs)
    engine = VerifyEngine(runner)
    gen = torch.Generator().manual_seed(args.seed + batch)
    prompts = torch.randint(vocab, (batch, args.prompt_len), generator=gen)
    all_ks = sorted({0, *ks})
    # One set of sessions and one plain cache serve every k (one prefill each); both
    # grow by about one token per round and k, so their contexts stay alike.
    sessions = EngineSessions(engine, "bench", prompts.tolist(), vocab)
    plain = _Plain(model, prompts.to(runner.device))
    items: list[tuple[str, int]] = [(kind, k) for k in all_ks for kind in ("engine", "plain")]
    times: dict[tuple[str, int], list[float]] = {item: [] for item in items}
    fractions: dict[int, list[float]] = {k: [] for k in all_ks}
    for r in range(args.warmup + args.repeats):
        for kind, k in items if r % 2 == 0 else items[::-1]:  # alternate the order
            dt = sessions.round([k] * batch) if kind == "engine" else plain.round(k)
            if r >= args.warmup:
                times[(kind, k)].append(dt)
                if kind == "engine":
                    fractions[k].append(sessions.forward_fractions[-1])
    decode = times[("engine", 0)]
    out: dict[str, Any] = {"decode_ms": _times(decode)[0], "decode_ms_spread": _times(decode)[1]}
    for k in ks:
        eng, ref = times[("engine", k)], times[("plain", k)]
        vs_ref = [e / p for e, p in zip(eng, ref, strict=True)]
        vs_dec = [e / d for e, d in zip(eng, decode, strict=True)]
        t_v_over_t_d = statistics.median(vs_dec)
        out[f"k{k}"] = {
            "round_ms": _times(eng)[0],
            "round_ms_spread": _times(eng)[1],
            "reference_ms": _times(ref)[0],
            "reference_ms_spread": _times(ref)[1],
            "forward_fraction": round(statistics.median(fractions[k]), 4),
            "vs_reference": round(statistics.median(vs_ref), 4),
            "vs_reference_spread": _quartiles(vs_ref),
            "vs_decode": round(t_v_over_t_d, 4),
            "vs_decode_spread": _quartiles(vs_dec),
            "limit": {
                str(a): round(expected_tokens(a, k) / t_v_over_t_d, 3) if k else 1.0 for a in ALPHAS
            },
        }
    return out


def _bench_mixed(model: Any, args: argparse.Namespace, batch: int) -> dict:
    """A batch with k uniform in 0..8 per row, packed, against the same batch padded."""
    import torch

    from verifier_node.engine import VerifyEngine
    from verifier_node.runner import TargetRunner

    vocab = model.config.vocab_size
    engine = VerifyEngine(
        TargetRunner(model, kv_budget_bytes=8 << 30, cuda_graphs=args.cuda_graphs)
    )
    gen = torch.Generator().manual_seed(args.seed + 1000)
    prompts = torch.randint(vocab, (batch, args.prompt_len), generator=gen).tolist()
    mixed = EngineSessions(engine, "mixed", [list(p) for p in prompts], vocab)
    padded = EngineSessions(engine, "padded", [list(p) for p in prompts], vocab)
    linears = _Linears(model)
    rng = random.Random(args.seed)
    mixed_ms, padded_ms, ratios, floors, tokens, padded_tokens = [], [], [], [], 0, 0
    for r in range(args.warmup + MIXED_ROUNDS_PER_REPEAT * args.repeats):
        ks = [rng.randint(0, MIXED_MAX_K) for _ in range(batch)]
        pad = [max(ks)] * batch
        n_mixed, n_padded = sum(k + 1 for k in ks), sum(k + 1 for k in pad)
        steps: list[tuple[Callable[[Any], float], Any]] = [
            (mixed.round, ks),
            (padded.round, pad),
            (linears.run, n_mixed),
            (linears.run, n_padded),
        ]
        order = range(4) if r % 2 == 0 else reversed(range(4))  # alternate the order
        t = {i: steps[i][0](steps[i][1]) for i in order}
        if r >= args.warmup:
            mixed_ms.append(t[0])
            padded_ms.append(t[1])
            ratios.append(t[0] / t[1])
            floors.append(t[2] / t[3])
            tokens += n_mixed
            padded_tokens += n_padded
    return {
        "batch": batch,
        "mixed_ms": _times(mixed_ms)[0],
        "padded_ms": _times(padded_ms)[0],
        "vs_padded_spread": _quartiles(ratios),
        "tokens_vs_padded": round(tokens / padded_tokens, 4),
        "mixed_vs_padded": round(statistics.median(ratios), 4),
        "linear_floor": round(statistics.median(floors), 4),
        "linear_floor_spread": _quartiles(floors),
    }


class _Linears:
    """Every ``nn.Linear`` of a model on ``tokens`` random rows: its matmul work alone."""

    def __init__(self, model: Any) -> None:
        import torch

        self.layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        self.inputs: dict[tuple[int, int], Any] = {}

    def run(self, tokens: int) -> float:
        """Wall time (ms) of one pass."""
        import torch

        sync = _synchronizer(self.layers[0].weight.device)
        with torch.inference_mode():
            xs = [self._input(tokens, layer) for layer in self.layers]
            sync()
            t0 = time.perf_counter()
            for layer, x in zip(self.layers, xs, strict=True):
                layer(x)
            sync()
        return (time.perf_counter() - t0) * 1e3

    def _input(self, tokens: int, layer: Any) -> Any:
        import torch

        key = (tokens, layer.in_features)
        if key not in self.inputs:
            w = layer.weight
            self.inputs[key] = torch.randn(tokens, key[1], dtype=w.dtype, device=w.device)
        return self.inputs[key]


def _bench_dtype(dtype_name: str, args: argparse.Namespace, device: Any) -> dict[str, Any]:
    from verifier_node.runner import DTYPES, TargetRunner

    if args.model_dir:
        model = TargetRunner.load(
            args.model_dir, dtype=dtype_name, device=str(device), threads=args.threads
        ).model
    else:
        model = _random_target(args, DTYPES[dtype_name], device)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    ks = sorted({int(k) for k in args.ks.split(",") if k.strip()})
    result: dict[str, Any] = {
        "params": sum(p.numel() for p in model.parameters()),
        "batches": {},
        "centralized_tokens_per_s": {},
    }
    for batch in batches:
        row = _bench_batch(model, batch, ks, args)
        result["batches"][str(batch)] = row
        result["centralized_tokens_per_s"][str(batch)] = round(batch / row["decode_ms"] * 1e3, 2)
        cells = "  ".join(
            f"k{k}: {row[f'k{k}']['round_ms']:7.2f} ms"
            f" x{row[f'k{k}']['vs_reference']:.3f} ref"
            f" x{row[f'k{k}']['vs_decode']:.2f} dec"
            for k in ks
            if k
        )
        print(
            f"{dtype_name:>9} B={batch:>2}: decode {row['decode_ms']:7.2f} ms  {cells}", flush=True
        )
    mixed_batch = min(MIXED_BATCH, max(batches))
    result["mixed"] = _bench_mixed(model, args, mixed_batch)
    result["mixed_vs_padded"] = result["mixed"]["mixed_vs_padded"]
    print(
        f"{dtype_name:>9} mixed k 0..{MIXED_MAX_K} at B={mixed_batch}: "
        f"x{result['mixed_vs_padded']:.3f} of padded "
        f"(tokens x{result['mixed']['tokens_vs_padded']:.3f}, "
        f"linear layers alone x{result['mixed']['linear_floor']:.3f})",
        flush=True,
    )
    return result


def run(args: argparse.Namespace) -> int:
    set_omp_wait()  # before torch loads (runtime.threads)
    from verifier_node.runner import configure_torch, resolve_device, resolve_dtype

    apply_presets(args)
    configure_torch(args.threads)
    device = resolve_device(args.device)
    dtypes = list(dict.fromkeys(resolve_dtype(d.strip(), device) for d in args.dtypes.split(",")))
    default = resolve_dtype("auto", device)
    result: dict[str, Any] = {
        "device": str(device),
        "dtype_default": default,
        "settings": {
            "batches": args.batches,
            "ks": args.ks,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "prompt_len": args.prompt_len,
            "threads": args.threads,
            "cuda_graphs": args.cuda_graphs,
            "model": args.model_dir
            or args.preset
            or f"random llama {args.hidden}x{args.layers}, vocabulary {args.vocab}",
        },
        "dtypes": {},
    }
    print(f"device {device}, dtypes {', '.join(dtypes)} (auto: {default})", flush=True)
    for name in dtypes:
        result["dtypes"][name] = _bench_dtype(name, args, device)
    top = result["dtypes"].get(default) or result["dtypes"][dtypes[0]]
    result["batches"] = top["batches"]
    result["mixed_vs_padded"] = top["mixed_vs_padded"]
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
