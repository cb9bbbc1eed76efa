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
import importlib
from typing import Final

# name -> (module, one-line help)
BENCHMARKS: Final[dict[str, tuple[str, str]]] = {
    "rtt": ("bench.rtt", "draft -> verdict round trip over MQTT, and message sizes"),
    "drafter": ("bench.drafter", "drafter decode-step latency (ONNX vs torch), local tokens/s"),
    "verifier": ("bench.verifier", "verifier forward pass and batching throughput"),
    "paper": ("bench.paper", "reproduce the paper's evaluation: WSTGR, capacity, cost"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    for name, (module_name, help_text) in BENCHMARKS.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # this benchmark is not part of this build (yet)
            raise
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_bench_run=module.run)
    parser.set_defaults(_bench_parser=parser)


def run(args: argparse.Namespace) -> int:
    bench_run = getattr(args, "_bench_run", None)
    if bench_run is None:
        args._bench_parser.print_help()
        return 2
    return int(bench_run(args) or 0)
