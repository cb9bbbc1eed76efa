"""``sled train-demo`` repeats the training script's flags without importing torch."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from sled.demo import train_cli


def options(parser: argparse.ArgumentParser) -> dict[str, object]:
    return {
        a.option_strings[0]: a.default
        for a in parser._actions
        if a.option_strings and a.dest not in ("help", "no_export")
    }


def test_flags_match_the_training_script(monkeypatch: pytest.MonkeyPatch) -> None:
    train = pytest.importorskip("sled.demo.train")
    captured: list[argparse.ArgumentParser] = []
    real = argparse.ArgumentParser.parse_args

    def spy(self: argparse.ArgumentParser, *a: Any, **k: Any) -> argparse.Namespace:
        captured.append(self)
        return real(self, *a, **k)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", spy)
    train.parse_args([])
    ours = argparse.ArgumentParser()
    train_cli.add_arguments(ours)
    assert options(ours) == options(captured[0])


def test_argv_round_trip() -> None:
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    args = parser.parse_args(["--quick", "--steps-target", "5", "--seed", "3"])
    argv = train_cli.to_argv(args)
    assert "--quick" in argv and argv[argv.index("--steps-target") + 1] == "5"
    again = parser.parse_args(argv)
    assert vars(again) == vars(args)
