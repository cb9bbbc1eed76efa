"""Record what the benchmark replays: reference continuations and draft traces.

* :func:`greedy_reference` — the target's own greedy continuation of each prompt
  (torch, KV cache, one sequence at a time: *target-only greedy decoding*, the ground
  truth for losslessness). Cached on disk, keyed by the model files and the prompts.
* :func:`record_drafter_traces` — the real drafter runtime (``edge_node.drafter``,
  ONNX) drafting from every committed position of every reference.
* :func:`ensure_onnx_drafter` — export a Hugging Face drafter folder once (cached).

Torch is imported inside the functions; all of this runs before any timing starts.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.sim.trace import PromptTrace
from runtime.models import eos_ids, load_causal_lm

PROMPTS: tuple[str, ...] = (
    "In the beginning God created",
    "And the LORD said unto Moses,",
    "Blessed is the man that walketh not",
    "The LORD is my shepherd;",
    "And it came to pass in those days,",
    "Now the serpent was more subtil than",
    "And Jesus answered and said unto them,",
    "Then the king of Israel",
    "For God so loved the world,",
    "And the children of Israel",
    "Hear, O Israel:",
    "And David said to Saul,",
    "Praise ye the LORD.",
    "Wisdom crieth without;",
    "And he spake a parable unto them,",
    "Woe unto you, scribes and Pharisees,",
)
"""KJV-style prompts (the demo models are trained on the King James Bible)."""


Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def model_key(model_dir: Path) -> str:
    """Content key of a model folder: name, size and mtime of its files (16 hex)."""
    h = hashlib.sha256()
    for f in sorted(Path(model_dir).glob("*")):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}\n".encode())
    return h.hexdigest()[:16]


def encode_prompts(tokenizer_json: Path, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt with the given ``tokenizer.json`` (no special tokens)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    return [list(tok.encode(p, add_special_tokens=False).ids) for p in prompts]


def greedy_continuation(
    model: Any, prompt: Sequence[int], max_new_tokens: int, eos: Sequence[int]
) -> list[int]:
    """Target-only greedy decoding with the KV cache; stops after an EOS token."""
    import torch

    out: list[int] = []
    with torch.inference_mode():
        ids = torch.tensor([list(prompt)], dtype=torch.long)  # [1, Lp]
        result = model(input_ids=ids, use_cache=True)
        past = result.cache
        for _ in range(max_new_tokens):
            tok = int(result.logits[0, -1].argmax())
            out.append(tok)
            if tok in eos:
                break
            result = model(
                input_ids=torch.tensor([[tok]], dtype=torch.long),
                cache=past,
                use_cache=True,
            )
            past = result.cache
    return out


def greedy_reference(
    model_dir: Path,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    cache_dir: Path,
    *,
    threads: int = 2,
    progress: Progress = _quiet,
) -> list[list[int]]:
    """The target's greedy continuation of each prompt; computed once, then cached."""
    key = hashlib.sha256(
        json.dumps([model_key(model_dir), [list(p) for p in prompts], max_new_tokens]).encode()
    ).hexdigest()[:16]
    path = Path(cache_dir) / f"reference-{key}.json"
    if path.is_file():
        cached: list[list[int]] = json.loads(path.read_text())
        return cached
    started = time.monotonic()
    model = load_causal_lm(model_dir, threads=threads)
    eos = eos_ids(model_dir)
    refs = [greedy_continuation(model, p, max_new_tokens, eos) for p in prompts]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(refs))
    progress(
        f"reference: {len(refs)} prompts x {max_new_tokens} tokens with {Path(model_dir).name} "
        f"in {time.monotonic() - started:.1f} s"
    )
    return refs


def ensure_onnx_drafter(hf_dir: Path, cache_dir: Path, progress: Progress = _quiet) -> Path:
    """An ONNX export of ``hf_dir`` (fp32, KV cache), exported on first use."""
    from edge_node.export import export_drafter

    out = Path(cache_dir) / f"onnx-{Path(hf_dir).name}-{model_key(hf_dir)}"
    if (out / "manifest.json").is_file():
        return out
    export_drafter(Path(hf_dir), out, dtype="fp32", progress=_quiet)
    progress(f"exported {hf_dir} to ONNX in {out}")
    return out


def record_drafter_traces(
    onnx_dir: Path,
    prompts: Sequence[Sequence[int]],
    references: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    chain_len: int,
) -> tuple[list[PromptTrace], float]:
    """Draft ``chain_len`` greedy tokens from every committed position, with confidences.

    Uses the edge node's own runtime, so the drafts are the ones a device sends. Returns
    the traces and the measured decode speed of the drafter here (tokens/s).
    """
    from edge_node.drafter import Drafter
    from edge_node.sampling import greedy

    drafter = Drafter(Path(onnx_dir), threads=1)
    traces = []
    decode_s, decode_steps = 0.0, 0
    for prompt, ref in zip(prompts, references, strict=True):
        state = drafter.new_state()
        chains: list[list[int]] = []
        confs: list[list[float]] = []
        for i in range(len(ref)):
            logits = drafter.sync(state, list(prompt) + list(ref[:i]))
            chain: list[int] = []
            conf: list[float] = []
            t0 = time.perf_counter()
            for j in range(chain_len):
                dist = greedy(logits)
                chain.append(dist.top)
                conf.append(dist.confidence)
                if j + 1 < chain_len:
                    logits = drafter.feed(state, [dist.top])
            decode_s += time.perf_counter() - t0
            decode_steps += chain_len - 1
            chains.append(chain)
            confs.append(conf)
        traces.append(PromptTrace(list(prompt), list(ref), chains, confs, max_new_tokens))
    speed = decode_steps / decode_s if decode_s > 0 else 0.0
    return traces, speed


def vocab_size(model_dir: Path) -> int:
    """The vocabulary size in a model folder's ``config.json``."""
    return int(json.loads((Path(model_dir) / "config.json").read_text())["vocab_size"])


def demo_params(model_dir: Path) -> int | None:
    """The demo target's parameter count from the demo folder's ``metrics.json``."""
    metrics = Path(model_dir).parent / "metrics.json"
    if metrics.is_file():
        value = json.loads(metrics.read_text()).get("target", {}).get("params")
        return int(value) if value else None
    return None
