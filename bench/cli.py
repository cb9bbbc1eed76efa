"""``sled bench``: one benchmark per module, ``bench/<name>.py``.

    sled bench rtt --json rtt.json         # MQTT draft -> verdict round trip, wire sizes
    sled bench drafter --json d.json       # drafter decode step, ONNX vs torch
    sled bench verifier --json v.json      # verification forward pass and batching
    sled bench paper --quick --out out/    # the paper's evaluation

Each module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and keeps heavy
imports inside ``run``. A benchmark whose module is not installed is left out.
"""

from __future__ import annotations

import argparse
from types import ModuleType

from sled.cli_common import Subcommands, add_subcommands


def _rtt() -> ModuleType:
    from bench import rtt

    return rtt


def _drafter() -> ModuleType:
    from bench import drafter

    return drafter


def _verifier() -> ModuleType:
    from bench import verifier

    return verifier


def _paper() -> ModuleType:
    from bench import paper

    return paper


# name -> (loader of the benchmark's module, one-line help)
BENCHMARKS: Subcommands = {
    "rtt": (_rtt, "draft -> verdict round trip over MQTT, and message sizes"),
    "drafter": (_drafter, "drafter decode-step latency (ONNX vs torch), local tokens/s"),
    "verifier": (_verifier, "verifier forward pass and batching throughput"),
    "paper": (_paper, "reproduce the paper's evaluation: WSTGR, capacity, cost"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    add_subcommands(sub, BENCHMARKS, run_attr="_bench_run")
    parser.set_defaults(_bench_parser=parser)


def run(args: argparse.Namespace) -> int:
    bench_run = getattr(args, "_bench_run", None)
    if bench_run is None:
        args._bench_parser.print_help()
        return 2
    return int(bench_run(args) or 0)
