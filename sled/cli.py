"""The ``sled`` command: one entry point, subcommands in their own modules.

Each subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and
keeps heavy imports (torch, onnxruntime) inside ``run``, so ``sled --help`` is fast and
the edge install (no torch) can run ``sled edge``. The modules are imported lazily,
by real import statements (no module names in strings), when the parser is built.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from runtime.threads import set_omp_wait
from sled.cli_common import add_subcommands


def _load(command: str) -> ModuleType:
    """The module of one subcommand (``bench X`` for a benchmark), imported on first use."""
    match command:
        case "demo":
            from sled.demo import cli as demo

            return demo
        case "edge":
            from edge_node import cli as edge

            return edge
        case "verifier":
            from verifier_node import cli as verifier

            return verifier
        case "subscribe":
            from sled import client_cli

            return client_cli
        case "generate":
            from sled import client_cli_generate

            return client_cli_generate
        case "export-drafter":
            from edge_node import export

            return export
        case "train-demo":
            from sled.demo import train_cli

            return train_cli
        case "models":
            from sled.models import cli as models

            return models
        case "credentials":
            from sled import credentials

            return credentials
        case "soak":
            from bench import soak

            return soak
        case "bench rtt":
            from bench import rtt

            return rtt
        case "bench drafter":
            from bench import drafter

            return drafter
        case "bench verifier":
            from bench import verifier as bench_verifier

            return bench_verifier
        case "bench paper":
            from bench import paper

            return paper
        case "bench scaleout":
            from bench import scaleout

            return scaleout
    raise KeyError(command)


# name -> one-line help
COMMANDS: dict[str, str] = {
    "demo": "run broker + verifier + 3 edge nodes on this machine and stream text",
    "edge": "run an edge node (drafter + MQTT)",
    "verifier": "run the verifier node (target model + batching)",
    "subscribe": "print a device's generated text as it arrives",
    "generate": "ask a device to generate text and print it",
    "export-drafter": "export a Hugging Face causal LM to ONNX with KV cache",
    "train-demo": "rebuild the demo models from the KJV corpus",
    "models": "fetch real models (SmolLM2, any GGUF), convert once, list the cache",
    "credentials": "create broker passwords and ACLs for devices/verifiers",
    "soak": "load/soak test: many simulated devices against one verifier",
}
# ``sled bench NAME``: one benchmark per module, ``bench/<name>.py``
BENCHMARKS: dict[str, str] = {
    "bench rtt": "draft -> verdict round trip over MQTT, and message sizes",
    "bench drafter": "drafter decode-step latency (ONNX vs torch), local tokens/s",
    "bench verifier": "verifier forward pass and batching throughput",
    "bench paper": "reproduce the paper's evaluation: WSTGR, capacity, cost",
    "bench scaleout": "throughput with 1, 2, 4 verifiers; sticky assignment vs $share",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sled", description="SLED speculative decoding over MQTT")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_subcommands(sub, COMMANDS, _load, run_attr="_run")
    bench = sub.add_parser("bench", help="benchmarks: rtt, drafter, verifier, paper")
    add_subcommands(
        bench.add_subparsers(dest="benchmark", metavar="BENCHMARK"),
        BENCHMARKS,
        _load,
        run_attr="_run",
    )
    bench.set_defaults(_help=bench.print_help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    set_omp_wait()  # before anything loads torch
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        getattr(args, "_help", parser.print_help)()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
