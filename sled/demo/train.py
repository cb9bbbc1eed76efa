"""``python -m sled.demo.train``: build the demo models (see :mod:`sled.demo.training`).

The same as ``sled train-demo --no-export``; the flags are defined once, torch-free, in
:mod:`sled.demo.train_cli`.
"""

from __future__ import annotations

import argparse

from sled.demo.train_cli import add_training_arguments, train


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line flags (defined once, torch-free, in :mod:`sled.demo.train_cli`)."""
    parser = argparse.ArgumentParser(
        prog="sled train-demo",
        description="Train the demo target model and its two distilled drafters on the KJV.",
    )
    add_training_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Build, evaluate, save and verify the demo models. Returns the exit status."""
    return train(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
