"""bench/drafter.py, called directly on a tiny model (the numbers are not checked)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench import drafter as bench_drafter
from tests.edge_node.conftest import TinyDrafter


def test_bench_drafter_writes_the_three_numbers(llama_drafter: TinyDrafter, tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    bench_drafter.add_arguments(parser)
    out = tmp_path / "drafter.json"
    args = parser.parse_args(
        [
            "--json", str(out),
            "--model", str(llama_drafter.hf_dir),
            "--cache-dir", str(tmp_path / "cache"),
            "--steps", "4",
            "--repeats", "1",
            "--prompt-tokens", "8",
            "--local-tokens", "8",
        ]
    )  # fmt: skip
    assert bench_drafter.run(args) == 0
    results = json.loads(out.read_text())
    for key in ("onnx_step_ms", "torch_step_ms", "local_tokens_per_s"):
        assert results[key] > 0, key
    assert results["family"] == "llama" and results["local_tokens"] == 8
    # a second run reuses the cached export
    exports = list((tmp_path / "cache").glob("onnx-*"))
    assert len(exports) == 1
