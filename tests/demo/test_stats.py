"""Demo bookkeeping: counters from result chunks, the summary's lossless verdict, the table."""

from __future__ import annotations

from schemas import ResultChunk, ResultFinal
from sled.demo.stats import DeviceSpec, DeviceStats, summary, table

SPEC = DeviceSpec("edge-1", "drafter-1l-onnx", threshold=0.4, max_draft=4)


def chunk(
    index: int,
    tokens: list[int],
    *,
    verified: bool = True,
    retract: int = 0,
    generated: int = 0,
    drafted: int = 0,
    accepted: int = 0,
) -> ResultChunk:
    return ResultChunk(
        request="r1", index=index, text="x" * len(tokens), tokens=tokens, verified=verified,
        retract=retract, generated=generated, drafted=drafted, accepted=accepted,
    )  # fmt: skip


def final(tokens: list[int], *, unverified: int = 0, finish: str = "length") -> ResultFinal:
    return ResultFinal(
        request="r1", finish_reason=finish, text="x" * len(tokens), tokens=tokens,
        completion_tokens=len(tokens), verified_tokens=len(tokens) - unverified,
        unverified_tokens=unverified, drafted=6, accepted=4, rounds=3, total_ms=500.0,
    )  # fmt: skip


def test_live_counters_then_final() -> None:
    d = DeviceStats(SPEC)
    d.start("r1", "In the beginning", now_s=10.0)
    assert not d.apply(chunk(0, [5, 6, 7], generated=3, drafted=4, accepted=2), now_s=10.5)
    assert (d.tokens, d.verified_tokens, d.drafted, d.accepted) == (3, 3, 4, 2)
    assert d.acceptance_rate == 0.5
    assert d.tokens_per_s(now_s=11.0) == 3.0  # 3 tokens over 1 s since the first request
    assert d.apply(final([5, 6, 7, 8]), now_s=12.0)
    assert (d.tokens, d.rounds, d.request) == (4, 3, "")
    assert d.tokens_per_s(now_s=99.0) == 2.0  # idle time after the last final not counted


def test_unverified_then_retracted() -> None:
    d = DeviceStats(SPEC)
    d.start("r1", "p")
    d.apply(chunk(0, [1, 2], generated=2))
    d.apply(chunk(1, [3, 4], verified=False, generated=4))
    assert (d.verified_tokens, d.unverified_tokens) == (2, 2)
    d.apply(chunk(2, [3, 9], retract=2, generated=4))
    assert (d.verified_tokens, d.unverified_tokens) == (4, 0)


def test_results_of_other_requests_are_ignored() -> None:
    d = DeviceStats(SPEC)
    d.start("r2", "p")
    assert not d.apply(final([1]))  # request r1: given up on
    assert d.outputs == []


def test_summary_lossless_only_when_every_output_matches() -> None:
    d = DeviceStats(SPEC)
    d.start("r1", "p", now_s=0.0)
    d.apply(final([1, 2, 3]), now_s=1.0)
    d.start("r1", "q", now_s=1.0)
    d.apply(final([4, 5]), now_s=2.0)
    assert summary([d], wall_s=2.0, checked=False)["lossless"] is None
    d.outputs[0].reference, d.outputs[1].reference = [1, 2, 3], [4, 5]
    doc = summary([d], wall_s=2.0, checked=True, broker={"kind": "amqtt"})
    assert doc["lossless"] is True and doc["broker"] == {"kind": "amqtt"}
    dev = doc["devices"]["edge-1"]
    assert (dev["tokens"], dev["tokens_per_s"], dev["acceptance_rate"]) == (5, 2.5, 0.6667)
    assert doc["total"]["wstgr_tokens_per_s"] == 2.5
    d.outputs[1].reference = [4, 6]
    assert summary([d], wall_s=2.0, checked=True)["lossless"] is False
    assert "lossless: FALSE" in table([d], lossless=False, wall_s=2.0)


def test_unverified_text_is_never_lossless() -> None:
    d = DeviceStats(SPEC)
    d.start("r1", "p")
    d.apply(final([1, 2], unverified=2))
    d.outputs[0].reference = [1, 2]
    assert summary([d], wall_s=1.0, checked=True)["lossless"] is False


def test_error_output_is_not_a_match() -> None:
    d = DeviceStats(SPEC)
    d.start("r1", "p")
    d.apply(final([], finish="error"))
    d.outputs[0].reference = []
    assert d.outputs[0].matches is False


def test_table_has_a_row_per_device() -> None:
    devices = [DeviceStats(SPEC), DeviceStats(DeviceSpec("edge-2", "drafter-2l-onnx", 0.8, 6))]
    text = table(devices, lossless=True, wall_s=1.0)
    assert "edge-1" in text and "drafter-2l" in text and "lossless: true" in text


def test_abandoned_request_is_not_counted() -> None:
    d = DeviceStats(SPEC)
    d.start("r1", "p", now_s=0.0)
    d.apply(final([1, 2]), now_s=1.0)
    d.start("r1", "q", now_s=1.0)
    d.apply(chunk(0, [3], generated=1), now_s=1.5)
    d.abandon()
    assert (d.tokens, d.request) == (2, "")
    assert d.busy_s(now_s=50.0) == 1.0
