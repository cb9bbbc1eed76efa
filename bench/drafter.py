"""``sled bench drafter``: drafter decode-step latency, ONNX vs torch, and local tokens/s.

    sled bench drafter --json drafter.json
    → {"onnx_step_ms": …, "torch_step_ms": …, "onnx_vs_torch": …, "local_tokens_per_s": …}

* ``onnx_step_ms``: median time of one cached decode step (one token in, KV cache of
  ``prompt_tokens + i`` tokens) of the exported drafter on onnxruntime (the edge runtime,
  :class:`edge_node.drafter.Drafter`).
* ``torch_step_ms``: the same steps on the same model in torch eager mode with a
  ``DynamicCache`` (transformers' default attention), same thread count.
* ``local_tokens_per_s``: completion tokens per second of a ``local``-mode generation
  through :class:`edge_node.service.EdgeNode` (drafter, greedy choice, chunking, worker
  thread), on an in-memory bus.

Model: the demo drafter ``sled/demo/models/drafter-2l`` (a Hugging Face folder) when it
exists, else a random-weight Llama of ~45M parameters with the demo tokenizer (vocab
4096); ``--model`` picks another folder. It is exported to ONNX on the fly into
``--cache-dir`` unless an export of the same weights is already there.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEMO_DRAFTER = REPO / "sled" / "demo" / "models" / "drafter-2l"
DEMO_TOKENIZER = REPO / "sled" / "demo" / "models" / "tokenizer.json"
DEFAULT_CACHE = Path(os.environ.get("SLED_CACHE_DIR", Path.home() / ".cache" / "sled")) / "bench"
PROMPT = "In the beginning God created the heaven and the earth. And the earth was"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="write results")
    parser.add_argument(
        "--model", type=Path, default=None, help="HF model folder (default: demo drafter-2l)"
    )
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="exports go here")
    parser.add_argument("--dtype", choices=("fp32", "int8", "fp16"), default="fp32")
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    parser.add_argument("--prompt-tokens", type=int, default=32, help="context before stepping")
    parser.add_argument("--steps", type=int, default=64, help="timed decode steps per backend")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; median over all")
    parser.add_argument("--local-tokens", type=int, default=128, help="tokens in the local run")


def _random_llama(path: Path) -> Path:
    """A ~45M-parameter random Llama with the demo tokenizer (or a tiny BPE one)."""
    import shutil

    from runtime.models import LlamaShape, save_random_llama, tiny_tokenizer

    if (path / "config.json").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    if DEMO_TOKENIZER.is_file():
        shutil.copyfile(DEMO_TOKENIZER, path / "tokenizer.json")
    else:
        tiny_tokenizer(path, 512)
    shape = LlamaShape(
        vocab_size=0,  # the tokenizer's
        hidden_size=512,
        intermediate_size=1536,
        num_layers=12,
        num_heads=8,
        max_positions=1024,
    )
    save_random_llama(path, shape, path / "tokenizer.json", seed=0)
    return path


def _weights_key(model_dir: Path, dtype: str) -> str:
    digest = hashlib.sha256(dtype.encode())
    for f in sorted(model_dir.glob("*")):
        if f.is_file() and f.suffix in (".json", ".safetensors", ".bin"):
            stat = f.stat()
            digest.update(f"{f.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:12]


def prepare(model: Path | None, cache_dir: Path, dtype: str) -> tuple[Path, Path, str]:
    """(HF folder, exported ONNX folder, description); exports when not cached."""
    from edge_node.export import export_drafter

    if model is None:
        if (DEMO_DRAFTER / "config.json").is_file():
            model, what = DEMO_DRAFTER, "demo drafter-2l"
        else:
            model, what = _random_llama(cache_dir / "random-llama-45m"), "random Llama ~45M"
    else:
        what = str(model)
    onnx_dir = cache_dir / f"onnx-{model.name}-{_weights_key(model, dtype)}"
    if not (onnx_dir / "manifest.json").is_file():
        print(f"exporting {model} to {onnx_dir}", file=sys.stderr)
        export_drafter(model, onnx_dir, dtype=dtype, progress=lambda s: print(s, file=sys.stderr))
    return model, onnx_dir, what


def onnx_step_times(onnx_dir: Path, prompt: list[int], steps: int, threads: int) -> list[float]:
    """Seconds per cached one-token decode step on onnxruntime."""
    import numpy as np

    from edge_node.drafter import Drafter

    drafter = Drafter(onnx_dir, threads=threads)
    times = []
    for timed in (False, True):  # a warm-up pass, then the timed one
        state = drafter.new_state()
        logits = drafter.feed(state, prompt)
        for _ in range(steps if timed else 3):
            tok = int(np.argmax(logits))
            t0 = time.perf_counter()
            logits = drafter.feed(state, [tok])
            if timed:
                times.append(time.perf_counter() - t0)
    return times


def torch_step_times(model_dir: Path, prompt: list[int], steps: int, threads: int) -> list[float]:
    """Seconds per cached one-token decode step in torch eager mode (DynamicCache)."""
    import torch

    from runtime.models import load_causal_lm

    model = load_causal_lm(model_dir, threads=threads)
    times = []
    with torch.inference_mode():
        for timed in (False, True):  # a warm-up pass, then the timed one
            out = model(input_ids=torch.tensor([prompt]), use_cache=True)
            cache, logits = out.cache, out.logits[0, -1]
            for _ in range(steps if timed else 3):
                tok = int(logits.argmax())
                t0 = time.perf_counter()
                out = model(input_ids=torch.tensor([[tok]]), cache=cache, use_cache=True)
                logits = out.logits[0, -1]
                if timed:
                    times.append(time.perf_counter() - t0)
    return times


async def _local_run(onnx_dir: Path, tokens: int, threads: int) -> dict[str, Any]:
    from edge_node.config import EdgeConfig
    from edge_node.drafter import Drafter
    from edge_node.service import EdgeNode
    from runtime.transport import MemoryBroker, MemoryTransport

    drafter = Drafter(onnx_dir, threads=threads)
    config = EdgeConfig(device_id="bench", threads=threads, max_draft=8, log_level="warning")
    node = EdgeNode(config, drafter=drafter, transport=MemoryTransport(MemoryBroker()))
    async with node:
        await node.generate_text(PROMPT, max_new_tokens=8, mode="local", publish=False)  # warm up
        final = await node.generate_text(PROMPT, max_new_tokens=tokens, mode="local", publish=False)
    return {"tokens": final.completion_tokens, "tokens_per_s": final.tokens_per_s}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    model_dir, onnx_dir, what = prepare(args.model, args.cache_dir, args.dtype)
    from edge_node.drafter import Drafter

    drafter = Drafter(onnx_dir, threads=args.threads)
    ids = drafter.encode(PROMPT * 8)
    prompt = (ids * (args.prompt_tokens // max(1, len(ids)) + 1))[: args.prompt_tokens]
    onnx: list[float] = []
    torch_: list[float] = []
    for _ in range(args.repeats):  # interleave so both see the same machine load
        onnx += onnx_step_times(onnx_dir, prompt, args.steps, args.threads)
        torch_ += torch_step_times(model_dir, prompt, args.steps, args.threads)
    local = asyncio.run(_local_run(onnx_dir, args.local_tokens, args.threads))
    onnx_ms = statistics.median(onnx) * 1000
    torch_ms = statistics.median(torch_) * 1000
    m = drafter.manifest
    return {
        "onnx_step_ms": round(onnx_ms, 4),
        "torch_step_ms": round(torch_ms, 4),
        "onnx_vs_torch": round(onnx_ms / torch_ms, 4),
        "local_tokens_per_s": round(local["tokens_per_s"], 2),
        "onnx_step_ms_p90": round(sorted(onnx)[int(0.9 * len(onnx))] * 1000, 4),
        "torch_step_ms_p90": round(sorted(torch_)[int(0.9 * len(torch_))] * 1000, 4),
        "model": what,
        "model_dir": str(model_dir),
        "onnx_dir": str(onnx_dir),
        "family": m.family,
        "parameters": m.num_parameters,
        "layers": m.num_layers,
        "vocab_size": m.vocab_size,
        "dtype": m.dtype,
        "threads": args.threads,
        "prompt_tokens": len(prompt),
        "steps": args.steps * args.repeats,
        "local_tokens": local["tokens"],
    }


def run(args: argparse.Namespace) -> int:
    import logging

    import structlog

    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    try:
        results = measure(args)
    finally:
        structlog.configure(**saved)
    text = json.dumps(results, indent=2)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    print(
        f"drafter {results['model']}: onnx {results['onnx_step_ms']:.3f} ms/step, torch "
        f"{results['torch_step_ms']:.3f} ms/step (x{results['onnx_vs_torch']:.2f}), local "
        f"{results['local_tokens_per_s']:.1f} tok/s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="sled bench drafter", description=__doc__)
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
