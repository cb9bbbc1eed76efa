"""The edge-only install: a venv with just ``pip install '<repo>[edge]'`` (no torch).

Runs only when ``SLED_EDGE_VENV`` names such a venv (``scripts/make-edge-venv.sh``
creates one; CI does). Checks its size and that ``sled edge`` from it, against a real
Mosquitto and a verifier from this (torch) environment, prints text that is verified
and token-exact the demo target's own greedy output.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime.mosquitto import Mosquitto
from sled.demo.healthcheck import add_arguments as health_arguments
from sled.demo.healthcheck import check
from sled.demo.procs import NodeProcess, node_env, sled_command
from sled.demo.run import default_models_dir

VENV = os.environ.get("SLED_EDGE_VENV")
MAX_SIZE_MB = 250
PROMPT = "In the beginning God created"
NEW_TOKENS = 24
ONLINE_TIMEOUT_S = 120.0

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(
        not VENV,
        reason="SLED_EDGE_VENV is not set (create the venv with scripts/make-edge-venv.sh)",
    ),
]


@pytest.fixture(scope="module")
def venv() -> Path:
    assert VENV is not None
    path = Path(VENV)
    assert (path / "bin" / "sled").is_file(), f"{path} has no sled command"
    return path


def size_mb(path: Path) -> float:
    total = sum(f.lstat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
    return total / 2**20


def test_no_torch_and_small(venv: Path) -> None:
    probe = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import onnxruntime, tokenizers, aiomqtt; import torch",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "No module named 'torch'" in probe.stderr, probe.stderr
    mb = size_mb(venv)
    print(f"\nedge venv {venv}: {mb:.0f} MB installed")
    assert mb <= MAX_SIZE_MB, f"edge venv is {mb:.0f} MB (> {MAX_SIZE_MB} MB)"


async def wait_online(url: str, verifier: str, proc: NodeProcess) -> None:
    parser = argparse.ArgumentParser()
    health_arguments(parser)
    args = parser.parse_args(["--verifier", verifier, "--broker-url", url, "--timeout-s", "2"])
    deadline = time.monotonic() + ONLINE_TIMEOUT_S
    while True:
        online, why = await check(args)
        if online:
            return
        assert proc.running, f"verifier exited:\n{proc.log_tail()}"
        assert time.monotonic() < deadline, why
        await asyncio.sleep(0.5)


def test_edge_from_the_venv_makes_verified_text(venv: Path, tmp_path: Path) -> None:
    stack = contextlib.ExitStack()
    try:
        broker = stack.enter_context(Mosquitto.start())
    except Exception as exc:  # no mosquitto here: CI installs it
        if os.environ.get("CI"):
            raise
        pytest.skip(f"mosquitto: {exc}")
    models = default_models_dir()
    verifier = NodeProcess(
        "verifier",
        sled_command(
            "verifier", "--model-dir", str(models / "target"), "--broker-url", broker.url,
            "--verifier-id", "venv-check", "--threads", "1", "--log-level", "warning",
        ),
        tmp_path / "verifier.log",
        node_env(threads=1),
    )  # fmt: skip
    try:
        verifier.start()
        asyncio.run(wait_online(broker.url, "venv-check", verifier))
        edge = subprocess.run(
            [str(venv / "bin" / "sled"), "edge", "--prompt", PROMPT, "--stats",
             "--drafter-dir", str(models / "drafter-1l-onnx"), "--broker-url", broker.url,
             "--device-id", "venv-edge", "--max-new-tokens", str(NEW_TOKENS),
             "--threshold", "0.1", "--log-level", "warning"],
            cwd=tmp_path, env=node_env(threads=1), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        asyncio.run(verifier.stop())
        stack.close()
    assert edge.returncode == 0, edge.stdout + edge.stderr
    stats_line = next(line for line in edge.stderr.splitlines() if line.startswith("{"))
    stats = ast.literal_eval(stats_line)
    assert stats["mode"] == "sled" and stats["finish_reason"] in ("length", "stop")
    assert stats["verified_tokens"] == stats["completion_tokens"] > 0, stats
    assert stats["unverified_tokens"] == 0 and stats["drafted"] > 0, stats
    from sled.demo.reference import target_greedy

    expected = target_greedy(models / "target", [PROMPT], NEW_TOKENS)[PROMPT]
    from tokenizers import Tokenizer

    text = Tokenizer.from_file(str(models / "target" / "tokenizer.json")).decode(expected)
    assert edge.stdout.strip() == text.strip(), (edge.stdout, text)
    print(f"\nedge from {venv}: {stats['tokens_per_s']:.1f} tok/s, {edge.stdout.strip()!r}")
    assert sys.executable not in edge.args  # the edge ran from the edge venv, not this one
