"""``sled bench rtt``: message sizes (exact) and a short run over a real broker (not timed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.rtt import (
    DRAFT8,
    TARGET_BYTES_PER_DRAFT_TOKEN,
    TARGET_VERDICT_BYTES,
    run_rtt,
    sample_draft,
    sample_verdict,
    wire_sizes,
)
from runtime.mosquitto import Mosquitto
from schemas import DraftRequest, Verdict, decode, encode
from sled.cli import main

KEYS = {"rtt_p50_ms", "rtt_p99_ms", "draft8_bytes", "verdict_bytes"}


def test_wire_sizes_meet_the_targets() -> None:
    draft8, verdict = wire_sizes()
    assert draft8 <= TARGET_BYTES_PER_DRAFT_TOKEN * len(DRAFT8)
    assert verdict <= TARGET_VERDICT_BYTES
    assert (draft8, verdict) == (70, 64)  # change docs/performance.md when these move


def test_sample_messages_are_valid_and_consistent() -> None:
    draft = sample_draft(seq=3, start=40)
    assert decode(encode(draft), expect=DraftRequest) == draft
    verdict = sample_verdict(draft)
    assert decode(encode(verdict), expect=Verdict) == verdict
    assert (verdict.seq, verdict.accepted, verdict.committed) == (3, 5, 46)
    assert verdict.token == DRAFT8[5]


@pytest.mark.integration
async def test_run_rtt_against_a_broker(broker: Mosquitto) -> None:
    result = await run_rtt(count=50, warmup=5, broker_url=broker.url)
    assert result.count == 50
    assert 0 < result.rtt_p50_ms <= result.rtt_p99_ms <= result.rtt_max_ms
    assert (result.draft8_bytes, result.verdict_bytes) == wire_sizes()


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_command_writes_the_json(tmp_path: Path, protocol: str) -> None:
    out = tmp_path / "rtt.json"
    argv = ["bench", "rtt", "--count", "50", "--warmup", "5", "--protocol", protocol]
    assert main([*argv, "--json", str(out)]) == 0
    body = json.loads(out.read_text())
    assert KEYS <= set(body)
    assert body["draft8_bytes"] <= 16 * 8 and body["verdict_bytes"] <= 64
    assert body["count"] == 50 and body["protocol"] == protocol
    assert body["rtt_p50_ms"] > 0


def test_bench_without_a_benchmark_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench"]) == 2
    assert "rtt" in capsys.readouterr().out
