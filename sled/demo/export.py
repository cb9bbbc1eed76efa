"""Export the demo drafters to ONNX (fp32), with the tied LM head stored once.

    python -m sled.demo.export                 # sled/demo/models/drafter-{1l,2l}-onnx

Each drafter is exported by :func:`edge_node.export.export_drafter` in fp32 (the fp16
and int8 variants change the drafter's greedy output on a few percent of the demo
prompts; fp32 keeps it exactly the model's). The demo models tie the LM head to the
token embedding, but the exported graph carries the head as a second, transposed copy
of the embedding (``MatMul(hidden, W)``, ``W = E.T``): 2 MB of a 5 MB file.
:func:`share_tied_weights` replaces that copy with ``Transpose(E)``, which onnxruntime
folds into a constant when it loads the model, so the logits are bit for bit the
same (checked here on every export) and the file is ~40 % smaller.

Needs torch, transformers and onnx (the ``verifier`` extra); the edge runtime does not.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

DRAFTERS = ("drafter-1l", "drafter-2l")
CHECK_STEPS = 8  # cached decode steps compared after the prefill
MIN_SHARED_ELEMENTS = 1024  # only large weights are worth a Transpose node


def share_tied_weights(model_path: Path) -> int:
    """Replace MatMul weights that are exact transposes of another initializer.

    Returns the number of bytes saved (0 when nothing was tied). Rewrites the file.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(model_path))
    graph = model.graph
    arrays = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    big = {n: a for n, a in arrays.items() if a.ndim == 2 and a.size >= MIN_SHARED_ELEMENTS}
    replace: dict[str, str] = {}  # transposed copy -> original
    for node in graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2 or node.input[1] not in big:
            continue
        copy = big[node.input[1]]
        for name, original in big.items():
            if name != node.input[1] and original.shape == copy.T.shape:
                if np.array_equal(original.T, copy):
                    replace[node.input[1]] = name
                    break
    if not replace:
        return 0
    saved = 0
    kept = []
    for init in graph.initializer:
        if init.name in replace:
            saved += arrays[init.name].nbytes
        else:
            kept.append(init)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for i, (copy_name, source_name) in enumerate(sorted(replace.items())):
        node = helper.make_node(
            "Transpose", [source_name], [copy_name], name=f"/sled/tied_{i}", perm=[1, 0]
        )
        graph.node.insert(0, node)  # before every use: the graph stays topologically sorted
    onnx.checker.check_model(model)
    onnx.save(model, str(model_path))
    return saved


def max_logit_diff(dir_a: Path, dir_b: Path, prompt: str = "In the beginning God") -> float:
    """Largest |logit difference| of two drafters over a prefill + cached greedy steps."""
    import numpy as np

    from edge_node.drafter import Drafter

    a, b = Drafter(dir_a, threads=1), Drafter(dir_b, threads=1)
    sa, sb = a.new_state(), b.new_state()
    ids = a.encode(prompt)
    la, lb = a.feed(sa, ids), b.feed(sb, ids)
    worst = float(np.abs(la - lb).max())
    for _ in range(CHECK_STEPS):
        token = int(np.argmax(la))
        la, lb = a.feed(sa, [token]), b.feed(sb, [token])
        worst = max(worst, float(np.abs(la - lb).max()))
    return worst


def export_demo_drafter(src: Path, out: Path, *, progress: Any = print) -> float:
    """Export ``src`` (HF folder) to ``out``: fp32, tied head shared, checked; the diff."""
    from edge_node.export import export_drafter
    from edge_node.manifest import MODEL_FILE, Manifest

    with tempfile.TemporaryDirectory(prefix="sled-demo-export-") as tmp:
        plain = Path(tmp) / "plain"
        export_drafter(src, plain, dtype="fp32", progress=progress)
        shared = Path(tmp) / "shared"
        shutil.copytree(plain, shared)
        saved = share_tied_weights(shared / MODEL_FILE)
        diff = max_logit_diff(plain, shared)
        if diff != 0.0:
            raise RuntimeError(f"{src}: sharing the tied head changed the logits by {diff:g}")
        manifest = Manifest.load(shared)
        manifest = dataclasses.replace(
            manifest,
            source=src.name,  # not the build machine's absolute path
            extra={**manifest.extra, "tied_lm_head": "Transpose of the embedding (sled.demo)"},
        )
        manifest.save(shared)
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(shared, out)
    size_mb = (out / MODEL_FILE).stat().st_size / 1e6
    progress(f"{out}: {size_mb:.1f} MB ({saved / 1e6:.1f} MB of tied weights shared), same logits")
    return diff


def main(argv: list[str] | None = None) -> int:
    from sled.demo.config import default_models_dir

    parser = argparse.ArgumentParser(
        prog="python -m sled.demo.export", description="export the demo drafters to ONNX"
    )
    parser.add_argument("--models", type=Path, default=default_models_dir(), help="models dir")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, args.threads))
    for name in DRAFTERS:
        src = args.models / name
        if not (src / "config.json").is_file():
            print(f"error: {src} is not a Hugging Face model folder", file=sys.stderr)
            return 2
        export_demo_drafter(src, args.models / f"{name}-onnx")
    return 0


if __name__ == "__main__":
    sys.exit(main())
