"""``sled bench scaleout`` end to end at a tiny size: two sticky verifier processes, then
two in a ``$share`` group, against the same simulated fleet on a real Mosquitto. Checks
the report's contract and what holds at any speed (no timing): every verdict matched the
target, sticky devices never resynced, ``$share`` round robin made them resync."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.scaleout, pytest.mark.slow]


def test_bench_scaleout_tiny(tmp_path: Path) -> None:
    out = tmp_path / "scaleout.json"
    argv = [sys.executable, "-m", "sled.cli", "bench", "scaleout", "--devices", "4"]
    argv += ["--verifiers", "2", "--warmup-s", "1", "--measure-s", "3"]
    argv += ["--hidden", "64", "--layers", "1", "--json", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["errors"] == 0
    assert report["resyncs_per_device_min_2"] == 0
    assert report["resyncs_per_device_min_share_2"] > 0
    assert report["moved_fraction_on_join"] <= report["moved_fraction_on_join_bound"]
    assert report["throughput_2_vs_1"] is None  # no 1-verifier run at this size
