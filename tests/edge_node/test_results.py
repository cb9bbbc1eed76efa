"""The result-stream assembler with literal tokens: no model, no asyncio, no broker."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from edge_node.errors import EdgeError
from edge_node.results import ResultStream, common_prefix

VOCAB = {1: "In", 2: " the", 3: " begin", 4: "ning", 5: " God", 6: " a"}


def words(ids: Sequence[int]) -> str:
    return "".join(VOCAB[i] for i in ids)


def utf8(ids: Sequence[int]) -> str:
    """A byte-level tokenizer in miniature: token ids are bytes."""
    return bytes(ids).decode("utf-8", errors="replace")


class Ticks:
    """A fake monotonic clock reading the given times in turn (then the last one)."""

    def __init__(self, *times_s: float) -> None:
        self.times_s = list(times_s)

    def __call__(self) -> float:
        return self.times_s.pop(0) if len(self.times_s) > 1 else self.times_s[0]


def stream(decode: object = words, clock: object = None) -> ResultStream:
    return ResultStream("req-1", "sled", prompt_tokens=3, decode=decode,  # type: ignore[arg-type]
                        clock=clock or Ticks(0.0), wall_ns=lambda: 42)  # fmt: skip


def test_verified_chunks_append_text_and_count_up() -> None:
    s = stream()
    c0 = s.chunk([1, 2], verified=True)
    c1 = s.chunk([3, 4], verified=True)
    assert (c0.index, c0.text, c0.tokens, c0.generated) == (0, "In the", [1, 2], 2)
    assert (c1.index, c1.text, c1.tokens, c1.generated) == (1, " beginning", [3, 4], 4)
    assert c0.verified and c1.verified and c0.retract == c1.retract == 0
    assert c0.sent_at_ns == 42
    assert s.text == "In the beginning"


def test_retract_withdraws_every_live_unverified_token() -> None:
    s = stream()
    s.chunk([1], verified=True)  # "In"
    u0 = s.chunk([2, 3], verified=False)  # " the begin", unverified
    u1 = s.chunk([4], verified=False)  # "ning", unverified
    assert (u0.text, u1.text, u0.verified) == (" the begin", "ning", False)
    back = s.chunk([2, 5], verified=True, retract=3)  # the verifier chose " God" at 2
    assert (back.text, back.retract, back.generated) == (" the God", 3, 3)
    assert (s.text, s.verified, s.unverified) == ("In the God", [1, 2, 5], [])
    final = s.final("length")
    assert (final.text, final.tokens) == ("In the God", [1, 2, 5])
    assert (final.verified_tokens, final.unverified_tokens) == (3, 0)


def test_final_of_a_fallback_counts_unverified_tokens() -> None:
    s = stream()
    s.chunk([1, 2], verified=True)
    s.chunk([6], verified=False)
    final = s.final("stop")
    assert (final.text, final.tokens, final.finish_reason) == ("In the a", [1, 2, 6], "stop")
    assert (final.completion_tokens, final.verified_tokens, final.unverified_tokens) == (3, 2, 1)


@pytest.mark.parametrize(
    ("retract", "verified", "message"),
    [
        (1, True, "retract 1 != 2 unverified tokens"),  # must withdraw all of them
        (0, True, "verified tokens after unverified ones without a retract"),
    ],
)
def test_inconsistent_chunks_are_errors(retract: int, verified: bool, message: str) -> None:
    s = stream()
    s.chunk([1, 2], verified=False)
    with pytest.raises(EdgeError, match=message):
        s.chunk([3], verified=verified, retract=retract)


def test_an_incomplete_utf8_character_is_held_back() -> None:
    s = stream(decode=utf8)
    euro = list("€".encode())  # 3 bytes
    texts = [s.chunk([0x61], verified=True).text, s.chunk(euro[:2], verified=True).text]
    assert texts == ["a", ""]  # the half character is not text yet
    assert s.final("length").text == "a"  # nor in the final, if generation ends there
    assert s.chunk(euro[2:], verified=True).text == "€"
    assert s.final("length").text == "a€"


def test_final_reports_counts_and_timings_from_the_clock() -> None:
    # started at 10.0 s, first chunk at 10.25 s, final at 12.0 s
    s = stream(clock=Ticks(10.0, 10.25, 12.0))
    s.count(drafted=8, accepted=6, rounds=2)
    chunk = s.chunk([1, 2, 3, 4], verified=True)
    final = s.final("length", error=None)
    assert (chunk.drafted, chunk.accepted) == (8, 6)
    assert (final.drafted, final.accepted, final.rounds, final.acceptance_rate) == (8, 6, 2, 0.75)
    assert (final.ttft_ms, final.total_ms, final.tokens_per_s) == (250.0, 2000.0, 2.0)
    assert (final.request, final.mode, final.prompt_tokens, final.sent_at_ns) == (
        "req-1", "sled", 3, 42)  # fmt: skip


def test_an_error_final_before_any_chunk() -> None:
    final = stream().final("error", error="EdgeError: no verifier")
    assert (final.finish_reason, final.error, final.tokens, final.text) == (
        "error", "EdgeError: no verifier", [], "")  # fmt: skip
    assert (final.ttft_ms, final.total_ms, final.tokens_per_s, final.acceptance_rate) == (
        0.0, 0.0, 0.0, 0.0)  # fmt: skip


@pytest.mark.parametrize(
    ("a", "b", "n"), [("", "", 0), ("abc", "abd", 2), ("abc", "ab", 2), ("x", "y", 0)]
)
def test_common_prefix(a: str, b: str, n: int) -> None:
    assert common_prefix(a, b) == n
