"""``sled bench verifier --quick``: the documented keys exist (figures are not asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.verifier import expected_tokens
from sled.cli import main

CELL_KEYS = {
    "round_ms",
    "round_ms_spread",
    "reference_ms",
    "reference_ms_spread",
    "vs_reference",
    "vs_reference_spread",
    "forward_fraction",
    "vs_decode",
    "vs_decode_spread",
    "limit",
}


@pytest.mark.parametrize(
    ("alpha", "k", "expected"), [(0.8, 0, 1.0), (0.8, 4, 3.3616), (0.5, 1, 1.5), (1.0, 4, 5.0)]
)
def test_expected_tokens_per_round(alpha: float, k: int, expected: float) -> None:
    assert expected_tokens(alpha, k) == pytest.approx(expected)


def test_quick_run_writes_every_documented_key(tmp_path: Path) -> None:
    out = tmp_path / "verifier.json"
    assert main(["bench", "verifier", "--quick", "--device", "cpu", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["dtypes"]) == {"float32", "bfloat16"}
    assert result["dtype_default"] in result["dtypes"]
    assert result["batches"] == result["dtypes"][result["dtype_default"]]["batches"]
    for dtype in ("float32", "bfloat16"):
        d = result["dtypes"][dtype]
        assert set(d["batches"]) == {"1", "4"}
        assert set(d["centralized_tokens_per_s"]) == {"1", "4"}
        for cells in d["batches"].values():
            assert cells["decode_ms"] > 0
            assert set(cells) == {"decode_ms", "decode_ms_spread", "k0", "k2"}
            for k in ("k0", "k2"):
                assert CELL_KEYS <= set(cells[k])
                assert set(cells[k]["limit"]) == {"0.6", "0.8", "0.9"}
            assert cells["k0"]["limit"]["0.8"] == 1.0  # no drafts: one token, one decode
        assert d["mixed_vs_padded"] > 0
        assert 0 < d["mixed"]["tokens_vs_padded"] <= 1
        assert d["mixed"]["linear_floor"] > 0
        assert len(d["mixed"]["linear_floor_spread"]) == 2
    assert result["mixed_vs_padded"] > 0


def test_the_llama3_8b_preset_has_llama3_8b_parameters() -> None:
    """The GPU check's random target is Llama-3-8B-shaped (built on the meta device here:
    no memory, no download)."""
    import argparse

    import torch

    from bench.verifier import add_arguments, apply_presets, target_shape
    from runtime.models import build_llama

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = apply_presets(parser.parse_args(["--preset", "llama3-8b"]))
    with torch.device("meta"):
        model = build_llama(target_shape(args), seed=0)
    assert sum(t.numel() for t in model.parameters()) == 8_030_261_248  # Llama-3-8B
