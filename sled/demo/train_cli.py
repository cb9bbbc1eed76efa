"""``sled train-demo``: rebuild the demo models (target + two drafters) from the KJV corpus.

The flags are defined here, torch-free, and shared with ``python -m sled.demo.train``;
the training itself is :mod:`sled.demo.training` (torch is imported only in
:func:`train`). After
training, the drafters are exported to ONNX for the edge nodes (``drafter-1l-onnx/``,
``drafter-2l-onnx/``, by :mod:`sled.demo.export`) unless ``--no-export``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from runtime.threads import set_omp_wait


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The training script's flags, defined here (no torch import) and used by both
    ``sled train-demo`` and ``python -m sled.demo.train``."""
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: the sled/demo/models package folder; "
        "with --quick: <work-dir>/models-quick)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "sled-train-demo",
        help="scratch folder for the cached corpus (default: %(default)s)",
    )
    parser.add_argument(
        "--steps-target",
        type=int,
        default=None,
        help="target training steps (default: the profile's, 360 full)",
    )
    parser.add_argument(
        "--steps-drafter",
        type=int,
        default=None,
        help="drafter distillation steps (default: the profile's, 400 full)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny smoke run: few steps, small batches, small evaluation",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``sled train-demo``: the training flags plus ``--no-export``."""
    add_training_arguments(parser)
    parser.add_argument(
        "--no-export", action="store_true", help="do not export the drafters to ONNX afterwards"
    )


def to_argv(args: argparse.Namespace) -> list[str]:
    """The parsed flags back as an argv list (for ``python -m sled.demo.train``)."""
    argv = ["--work-dir", str(args.work_dir), "--threads", str(args.threads)]
    argv += ["--seed", str(args.seed)]
    if args.out is not None:
        argv += ["--out", str(args.out)]
    if args.steps_target is not None:
        argv += ["--steps-target", str(args.steps_target)]
    if args.steps_drafter is not None:
        argv += ["--steps-drafter", str(args.steps_drafter)]
    if args.quick:
        argv.append("--quick")
    return argv


def train(args: argparse.Namespace) -> int:
    """Train the demo models with the parsed training flags; the exit status."""
    # Spinning OpenMP workers steal the shared cores from everything else on the machine
    # (read when torch loads its OpenMP runtime, so set before the import).
    set_omp_wait()  # before torch loads (runtime.threads)
    from sled.demo.training.pipeline import train_demo

    return train_demo(args)


def run(args: argparse.Namespace) -> int:
    """Train, then export the drafters; the exit status."""
    status = train(args)
    if status != 0 or args.no_export:
        return status
    from sled.demo.export import main as export_main

    if args.out is not None:
        out = args.out
    elif args.quick:
        out = args.work_dir / "models-quick"
    else:
        from sled.demo.config import default_models_dir

        out = default_models_dir()
    return export_main(["--models", str(out), "--threads", str(args.threads)])
