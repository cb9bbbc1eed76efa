"""A drafter for a cached target: its design, its own weights, and its assembly.

Design (SmolLM2-135M-Instruct): a Llama model of the target's width (576) with
``len(layers)`` decoder layers initialised from the target's layers ``layers``, the
target's final norm, and the target's token embeddings tied to the output head and
FROZEN during distillation. So the drafter shares the target's tokenizer exactly, and
what it adds to the target is only its decoder layers and final norm: those are stored
in the repository (``sled/models/<drafter>/drafter.safetensors``, fp16), the embeddings
(28M parameters, ~57 MB in fp16) are taken from the fetched target when the drafter is
ASSEMBLED into a Hugging Face folder at ``sled models fetch`` time; it is then exported
to ONNX with KV cache (fp32 and int8) by :mod:`edge_node.export`.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from sled.models.registry import DRAFTERS_DIR
from sled.models.store import (
    Entry,
    FetchError,
    Progress,
    print_progress,
    sha256_file,
    write_marker,
)

WEIGHTS_FILE = "drafter.safetensors"
META_FILE = "drafter.json"
SHARED_PREFIXES = ("model.embed_tokens.", "lm_head.")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)


def drafter_config(target_config: Any, num_layers: int) -> Any:
    """The target's config with ``num_layers`` decoder layers and tied embeddings."""
    config = target_config.__class__.from_dict(target_config.to_dict())
    config.num_hidden_layers = num_layers
    config.tie_word_embeddings = True
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:num_layers]
    return config


def build_drafter(target: Any, layers: list[int]) -> Any:
    """A drafter initialised from ``target``: its embeddings, its layers ``layers``, its norm."""
    import torch
    from transformers import AutoModelForCausalLM

    config = drafter_config(target.config, len(layers))
    torch.manual_seed(0)  # nothing is random after the copies below; kept for safety
    drafter = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    src, dst = target.model, drafter.model
    dst.embed_tokens.weight.data.copy_(src.embed_tokens.weight.data)
    for i, layer_id in enumerate(layers):
        dst.layers[i].load_state_dict(src.layers[layer_id].state_dict())
    dst.norm.load_state_dict(src.norm.state_dict())
    drafter.tie_weights()
    return drafter.eval()


def own_state(drafter: Any) -> dict[str, Any]:
    """The drafter's own tensors (everything but the shared embeddings / output head)."""
    return {
        k: v.detach().contiguous()
        for k, v in drafter.state_dict().items()
        if not k.startswith(SHARED_PREFIXES)
    }


def save_own(drafter: Any, out_dir: Path, meta: dict[str, Any]) -> Path:
    """Write the drafter's own tensors in fp16 plus ``drafter.json`` (its design + facts)."""
    import torch
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.to(torch.float16) for k, v in own_state(drafter).items()}
    save_file(tensors, str(out_dir / WEIGHTS_FILE))
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out_dir / WEIGHTS_FILE


def load_drafter(target_dir: Path, own_dir: Path) -> Any:
    """The drafter in float32: ``own_dir``'s layers on the target's embeddings."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    meta = json.loads((own_dir / META_FILE).read_text())
    config = drafter_config(AutoConfig.from_pretrained(str(target_dir)), len(meta["layers"]))
    drafter = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    own = {k: v.to(torch.float32) for k, v in load_file(str(own_dir / WEIGHTS_FILE)).items()}
    with safe_open(str(target_dir / "model.safetensors"), framework="pt") as f:
        own["model.embed_tokens.weight"] = f.get_tensor("model.embed_tokens.weight").float()
    missing, unexpected = drafter.load_state_dict(own, strict=False)
    missing = [k for k in missing if not k.startswith("lm_head.")]
    if missing or unexpected:
        raise FetchError(f"drafter weights do not fit: missing {missing}, unexpected {unexpected}")
    drafter.tie_weights()
    return drafter.eval()


def assemble(
    target_dir: Path, own_dir: Path, out_dir: Path, progress: Progress = print_progress
) -> Path:
    """Write the full drafter as a Hugging Face folder (``out_dir``) with the target's
    tokenizer files, ready for ``sled export-drafter``."""
    drafter = load_drafter(target_dir, own_dir)
    partial = out_dir.with_name(out_dir.name + ".part")
    shutil.rmtree(partial, ignore_errors=True)
    drafter.save_pretrained(partial, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (target_dir / name).is_file():
            shutil.copyfile(target_dir / name, partial / name)
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.replace(out_dir)
    num_params = sum(p.numel() for p in drafter.parameters())
    progress(f"      drafter: {num_params / 1e6:.1f}M parameters (embeddings shared) in {out_dir}")
    return out_dir


def export_onnx(
    hf_dir: Path,
    out_root: Path,
    dtypes: tuple[str, ...] = ("fp32", "int8"),
    progress: Progress = print_progress,
) -> dict[str, Path]:
    """Export the assembled drafter with :func:`edge_node.export.export_drafter`."""
    from edge_node.export import export_drafter

    outs: dict[str, Path] = {}
    for dtype in dtypes:
        out = out_root / f"drafter-onnx-{dtype}"
        export_drafter(hf_dir, out, dtype=dtype, progress=lambda line: progress("      " + line))
        outs[dtype] = out
    return outs


def ensure_drafter(
    entry: Entry, *, force: bool = False, progress: Progress = print_progress
) -> Entry:
    """Assemble and export the drafter of a cached target, once per version of its
    weights (their sha256 is recorded in the entry's marker).

    Does nothing for a target without a drafter, or whose drafter weights are absent
    from this checkout (they are distilled by :mod:`sled.models.distill`).
    """
    name = entry.facts.get("drafter")
    own_dir = DRAFTERS_DIR / str(name) if name else None
    if own_dir is None:
        return entry
    if not (own_dir / WEIGHTS_FILE).is_file():
        progress(
            f"no drafter built: {own_dir / WEIGHTS_FILE} is not in this install (the "
            "drafters' own layers ship in the source tree, not in the wheel): run "
            "`sled models fetch` from a checkout of the project"
        )
        return entry
    digest = sha256_file(own_dir / WEIGHTS_FILE, progress=lambda _: None)
    if entry.facts.get("drafter_sha256") == digest and not force:
        return entry
    started = time.monotonic()
    progress(f"[drafter 1/2] assembling the {name} drafter on the target's embeddings")
    hf_dir = assemble(entry.target, own_dir, entry.path / "drafter", progress)
    progress("[drafter 2/2] exporting it to ONNX with KV cache (fp32, int8)")
    outs = export_onnx(hf_dir, entry.path, progress=progress)
    facts = entry.facts | {
        "drafter_onnx": {k: str(v) for k, v in outs.items()},
        "drafter_sha256": digest,
        "drafter_meta": json.loads((own_dir / META_FILE).read_text()),
        "drafter_s": round(time.monotonic() - started, 1),
    }
    return write_marker(entry.path, facts)
