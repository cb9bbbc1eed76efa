"""What apps and devices exchange: a generation request and its result stream.

* :class:`GenerateRequest` — app → device: generate text for a prompt.
* :class:`ResultChunk` — device → apps: a piece of the text (verified or provisional).
* :class:`ResultFinal` — device → apps: the end, with usage and timings.

App-facing records use full field names so JSON readers (Node-RED,
``mosquitto_sub``) see readable keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from schemas.errors import ErrorCode
from schemas.record import (
    FINISH_REASONS,
    FORMATS,
    MODES,
    Limits,
    Record,
    SamplingParams,
    check_choice,
    check_ident,
    check_ids,
    check_nonneg,
    fail,
)


@dataclass(frozen=True, slots=True)
class GenerateRequest(Record):
    """App → device on ``…/dev/{device}/req``: please generate text for this prompt.

    Results stream to ``…/dev/{device}/out/{request}`` in ``format`` (msgpack or json).
    """

    KIND: ClassVar[str] = "generate"

    request: str
    prompt: str
    max_new_tokens: int = 64
    params: SamplingParams = field(default_factory=SamplingParams)
    mode: str = "sled"
    format: str = "msgpack"
    sent_at_ns: int = 0
    tpot_ms: float | None = None  # latency objective, ms per generated token

    def check(self, limits: Limits) -> None:
        check_ident("generate.request", self.request, limits)
        if not self.prompt:
            raise fail("generate.prompt", "must not be empty")
        if len(self.prompt) > limits.max_text_chars:
            raise fail(
                "generate.prompt",
                f"{len(self.prompt)} characters exceed {limits.max_text_chars}",
                ErrorCode.TOO_LARGE,
            )
        if not 1 <= self.max_new_tokens <= limits.max_new_tokens:
            raise fail(
                "generate.max_new_tokens",
                f"{self.max_new_tokens} not in [1, {limits.max_new_tokens}]",
            )
        check_choice("generate.mode", self.mode, MODES)
        check_choice("generate.format", self.format, FORMATS)
        self.params.check(limits)
        check_nonneg("generate.sent_at_ns", self.sent_at_ns)
        if self.tpot_ms is not None and not 0 < self.tpot_ms < math.inf:
            raise fail("generate.tpot_ms", f"must be finite and > 0, got {self.tpot_ms}")


@dataclass(frozen=True, slots=True)
class ResultChunk(Record):
    """Device → apps on ``…/dev/{device}/out/{request}``: a piece of generated text.

    ``verified`` is False only for text released in fallback (drafter alone, verifier
    unreachable); a chunk is never half verified. Unverified text is provisional: when
    the verifier answers again, a verified chunk with ``retract = n`` first withdraws the
    last ``n`` tokens (all of them unverified), then appends its own text. Verified text
    is never withdrawn. Counters are running totals.
    """

    KIND: ClassVar[str] = "chunk"

    request: str
    index: int
    text: str
    tokens: list[int]
    verified: bool = True
    retract: int = 0  # unverified tokens withdrawn before this chunk's text
    generated: int = 0  # completion tokens so far
    drafted: int = 0  # draft tokens sent for verification so far
    accepted: int = 0  # of which accepted
    sent_at_ns: int = 0

    def check(self, limits: Limits) -> None:
        check_ident("chunk.request", self.request, limits)
        check_nonneg("chunk.index", self.index)
        if len(self.text) > limits.max_text_chars:
            raise fail("chunk.text", "too long", ErrorCode.TOO_LARGE)
        check_ids("chunk.tokens", self.tokens, limits, limits.max_new_tokens)
        for name in ("retract", "generated", "drafted", "accepted", "sent_at_ns"):
            check_nonneg(f"chunk.{name}", getattr(self, name))


@dataclass(frozen=True, slots=True)
class ResultFinal(Record):
    """Device → apps on ``…/dev/{device}/out/{request}``: the end of a generation.

    ``finish_reason``: ``stop`` (EOS), ``length`` (max_new_tokens), ``error`` (see
    ``error``) or ``cancelled``. Times are milliseconds; ``acceptance_rate`` is
    accepted / drafted (0 when nothing was drafted).

    ``verification_expired`` is True only in SLED mode when the verifier stayed away
    past the device's verification deadline: the last ``unverified_tokens`` tokens
    are the drafter's text, not the target's. Otherwise a SLED final that is not an
    error has ``unverified_tokens == 0`` (local mode: all unverified, by design).
    """

    KIND: ClassVar[str] = "final"

    request: str
    finish_reason: str
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    mode: str = "sled"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    verified_tokens: int = 0
    unverified_tokens: int = 0
    drafted: int = 0
    accepted: int = 0
    rounds: int = 0
    acceptance_rate: float = 0.0
    ttft_ms: float = 0.0
    total_ms: float = 0.0
    tokens_per_s: float = 0.0
    error: str | None = None
    verification_expired: bool = False  # SLED gave up waiting: unverified text remains
    sent_at_ns: int = 0

    def check(self, limits: Limits) -> None:
        check_ident("final.request", self.request, limits)
        check_choice("final.finish_reason", self.finish_reason, FINISH_REASONS)
        check_choice("final.mode", self.mode, MODES)
        check_ids("final.tokens", self.tokens, limits, limits.max_new_tokens)
        for name in (
            "prompt_tokens",
            "completion_tokens",
            "verified_tokens",
            "unverified_tokens",
            "drafted",
            "accepted",
            "rounds",
            "acceptance_rate",
            "ttft_ms",
            "total_ms",
            "tokens_per_s",
            "sent_at_ns",
        ):
            check_nonneg(f"final.{name}", getattr(self, name))
