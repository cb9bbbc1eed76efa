"""The real-pair section of ``sled bench paper`` (bench/sim/realpair.py): plan and report.

The experiment itself needs the real model (minutes): run it with
``sled bench paper --quick --out DIR`` (section "on the real pair" of DIR/report.md).
"""

from __future__ import annotations

import json

from bench.sim.realpair import RealPlan, report_lines
from sled.models.acceptance import PROMPTS_FILE

ROW = {
    "drafter": "int8",
    "max_draft": 3,
    "threshold": 0.3,
    "acceptance_rate": 0.171,
    "mean_accepted": 0.42,
    "mean_drafted": 2.5,
    "tokens_per_round": 1.41,
}
REAL = {
    "model": "smollm2-135m",
    "prompts": ["Why is the sky blue?"],
    "max_new_tokens": 32,
    "policy": {"max_draft": 3, "threshold": 0.3},
    "drafter_speed_here": {"int8": 120.0, "fp32": 80.0},
    "acceptance_offline": [ROW],
    "live": {"ms_per_token": 250.0, "lossless": True, "acceptance_rate": 0.2, "tokens": 32},
    "hf": {
        "target_only": {"ms_per_token": 90.0, "lossless": True, "tokens": 32},
        "assisted": {"ms_per_token": 110.0, "lossless": True, "tokens": 32},
    },
    "runtime_s": 300.0,
}


def test_quick_plan_takes_one_prompt_per_category() -> None:
    categories = json.loads(PROMPTS_FILE.read_text())["categories"]
    assert RealPlan.for_run(quick=True).prompts == len(categories)
    full = RealPlan.for_run(quick=False)
    assert full.prompts == sum(len(c) for c in categories.values())


def test_report_lists_acceptance_and_one_device_latency() -> None:
    md = "\n".join(report_lines(REAL))
    assert "| int8 | 3 | 0.3 | 0.171 | 0.42 | 2.50 | 1.41 |" in md
    assert "| HF assisted generation (one process) | 110.0 | True |" in md
    assert "over MQTT | 250.0 | True |" in md
    assert "int8 120, fp32 80" in md


def test_report_says_why_it_was_skipped() -> None:
    assert report_lines(None) == []
    lines = report_lines({"model": "smollm2-135m", "skipped": "not in the model cache"})
    assert "skipped: not in the model cache" in lines[0]
