"""The ``sled`` command: one entry point, subcommands in their own modules.

Each subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and
keeps heavy imports (torch, onnxruntime) inside ``run``, so ``sled --help`` is fast and
the edge install (no torch) can run ``sled edge``. The modules are imported lazily,
by real import statements (no module names in strings), when the parser is built.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from sled.cli_common import Subcommands, add_subcommands


def _demo() -> ModuleType:
    from sled.demo import cli

    return cli


def _edge() -> ModuleType:
    from edge_node import cli

    return cli


def _verifier() -> ModuleType:
    from verifier_node import cli

    return cli


def _subscribe() -> ModuleType:
    from sled import client_cli

    return client_cli


def _generate() -> ModuleType:
    from sled import client_cli_generate

    return client_cli_generate


def _export_drafter() -> ModuleType:
    from edge_node import export

    return export


def _train_demo() -> ModuleType:
    from sled.demo import train_cli

    return train_cli


def _credentials() -> ModuleType:
    from sled import credentials

    return credentials


def _bench() -> ModuleType:
    from bench import cli

    return cli


def _soak() -> ModuleType:
    from bench import soak

    return soak


# name -> (loader of the subcommand's module, one-line help)
COMMANDS: Subcommands = {
    "demo": (_demo, "run broker + verifier + 3 edge nodes on this machine and stream text"),
    "edge": (_edge, "run an edge node (drafter + MQTT)"),
    "verifier": (_verifier, "run the verifier node (target model + batching)"),
    "subscribe": (_subscribe, "print a device's generated text as it arrives"),
    "generate": (_generate, "ask a device to generate text and print it"),
    "export-drafter": (_export_drafter, "export a Hugging Face causal LM to ONNX with KV cache"),
    "train-demo": (_train_demo, "rebuild the demo models from the KJV corpus"),
    "credentials": (_credentials, "create broker passwords and ACLs for devices/verifiers"),
    "bench": (_bench, "benchmarks: rtt, drafter, verifier, paper"),
    "soak": (_soak, "load/soak test: many simulated devices against one verifier"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sled", description="SLED speculative decoding over MQTT")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_subcommands(sub, COMMANDS, run_attr="_run")
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
