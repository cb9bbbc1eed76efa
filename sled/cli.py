"""The ``sled`` command: one entry point, subcommands in their own modules.

Each subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and
keeps heavy imports (torch, onnxruntime) inside ``run``, so ``sled --help`` is fast and
the edge install (no torch) can run ``sled edge``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "sled.demo.cli",
        "run broker + verifier + 3 edge nodes on this machine and stream text",
    ),
    "edge": ("edge_node.cli", "run an edge node (drafter + MQTT)"),
    "verifier": ("verifier_node.cli", "run the verifier node (target model + batching)"),
    "subscribe": ("sled.client_cli", "print a device's generated text as it arrives"),
    "generate": ("sled.client_cli_generate", "ask a device to generate text and print it"),
    "export-drafter": ("edge_node.export", "export a Hugging Face causal LM to ONNX with KV cache"),
    "train-demo": ("sled.demo.train_cli", "rebuild the demo models from the KJV corpus"),
    "credentials": ("sled.credentials", "create broker passwords and ACLs for devices/verifiers"),
    "bench": ("bench.cli", "benchmarks: rtt, drafter, verifier, paper"),
    "soak": ("bench.soak", "load/soak test: many simulated devices against one verifier"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sled", description="SLED speculative decoding over MQTT")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # subcommand not installed in this build
            raise
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
