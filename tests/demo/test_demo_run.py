"""``sled demo`` end to end, as a user runs it: no Mosquitto on PATH (amqtt in-process).

The shipped demo models, a real ``sled verifier`` and three ``sled edge`` processes; the
summary must say lossless (every completion token-exact equal to the target model's own
greedy output, computed with transformers), and Ctrl-C must stop every node.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sled.demo.run import DEVICES, default_models_dir

pytestmark = pytest.mark.slow

PROMPTS = 2
MAX_NEW_TOKENS = 32
RUN_TIMEOUT_S = 240


def demo_env() -> dict[str, str]:
    """This environment without any PATH folder holding ``mosquitto``, and no SLED_*."""
    dirs = os.environ.get("PATH", "").split(os.pathsep)
    path = os.pathsep.join(d for d in dirs if d and not (Path(d) / "mosquitto").exists())
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLED_")}
    env.update(PATH=path, OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1", TERM="dumb")
    return env


@pytest.fixture(scope="module", autouse=True)
def _models() -> None:
    missing = [
        p
        for p in ("target/config.json", *(f"{d.drafter}/model.onnx" for d in DEVICES))
        if not (default_models_dir() / p).is_file()
    ]
    if missing:
        pytest.fail(f"demo models missing from {default_models_dir()}: {missing}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes (its parent, the demo, has exited)
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def test_demo_is_lossless_without_mosquitto(tmp_path: Path) -> None:
    summary_path = tmp_path / "summary.json"
    proc = subprocess.run(
        [sys.executable, "-m", "sled.cli", "demo", "--prompts", str(PROMPTS),
         "--max-new-tokens", str(MAX_NEW_TOKENS), "--json", str(summary_path),
         "--log-dir", str(tmp_path / "logs"), "--verifier-threads", "1"],
        env=demo_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "\x1b[" not in proc.stdout  # not a terminal: plain lines
    assert "broker: amqtt" in out
    assert "lossless: true" in proc.stdout  # the closing table
    summary = json.loads(summary_path.read_text())
    assert summary["lossless"] is True, out
    assert summary["broker"]["kind"] == "amqtt" and summary["broker"]["protocol"] == "3.1.1"
    assert summary["outputs_checked"] == summary["outputs_matching"] == PROMPTS * len(DEVICES)
    assert set(summary["devices"]) == {d.device for d in DEVICES}
    for device, d in summary["devices"].items():
        assert d["requests"] == PROMPTS and d["errors"] == 0, device
        assert 0 < d["tokens"] <= PROMPTS * MAX_NEW_TOKENS, device
        assert d["tokens"] == d["verified_tokens"] and d["unverified_tokens"] == 0, device
        assert d["tokens_per_s"] > 0, device
        assert d["drafted"] > 0 and 0 < d["acceptance_rate"] <= 1, device
        for o in d["outputs"]:
            assert o["matches_target"] is True and o["tokens"] == o["reference_tokens"], device
    # Same prompts, same target: every device printed the same text for the same prompt.
    texts = {(o["prompt"], o["text"]) for d in summary["devices"].values() for o in d["outputs"]}
    assert len(texts) == PROMPTS
    assert summary["total"]["wstgr_tokens_per_s"] > 0


def test_ctrl_c_stops_every_node(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sled.cli", "demo", "--prompts", "0", "--no-check",
         "--log-dir", str(tmp_path / "logs"), "--verifier-threads", "1"],
        env=demo_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    pids: list[int] = []
    lines: list[str] = []
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        for line in proc.stdout:  # bounded: the demo exits or the deadline kills it
            lines.append(line)
            pids += [int(p) for p in re.findall(r"\(pid (\d+)\)", line)]
            if line.startswith("[edge-"):  # a request finished: everything is running
                break
            assert time.monotonic() < deadline, "".join(lines)
        assert len(pids) == 1 + len(DEVICES), "".join(lines)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    out = "".join(lines) + rest
    assert proc.returncode == 130, out
    assert (
        "stopped by Ctrl-C: every node stopped" in out and "edge-1" in rest
    )  # the table still printed
    time.sleep(0.5)
    assert [p for p in pids if alive(p)] == [], out
