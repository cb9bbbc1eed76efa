"""The result stream of one request: tokens in, ``ResultChunk`` … ``ResultFinal`` out.

Pure: no asyncio, MQTT or model (``decode`` turns token ids into text; the clocks are
injected). Terms:

* *verified* tokens: committed by the verifier (SLED, centralized); never withdrawn.
* *unverified* tokens: drafted locally and streamed before verification (local mode,
  SLED fallback); the live ones are withdrawn together by a chunk's ``retract``.
* a chunk's ``text`` is what it appends to the text streamed so far; an incomplete
  UTF-8 character at the end is held back until its last byte comes.

    stream = ResultStream("req-1", "sled", prompt_tokens=5, decode=drafter.decode)
    stream.chunk([7, 8], verified=False)            # index 0: unverified 7 8
    stream.chunk([7, 9], verified=True, retract=2)  # index 1: withdraws them, 7 9 verified
    stream.final("length")                          # tokens [7, 9], text, timings
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from edge_node.errors import EdgeError
from schemas import ResultChunk, ResultFinal, SchemaError, check_id
from schemas.codec import peek

Format = Literal["msgpack", "json"]

Result = ResultChunk | ResultFinal
INCOMPLETE = "\ufffd"  # what a decoder shows for an incomplete UTF-8 character


@dataclass
class ResultStream:
    """One request's result stream: chunk indices, streamed text, counters, timings.

    Times: ``clock`` is monotonic seconds, ``wall_ns`` the ``sent_at_ns`` stamp.
    """

    request: str
    mode: str
    prompt_tokens: int
    decode: Callable[[Sequence[int]], str]
    clock: Callable[[], float] = time.monotonic
    wall_ns: Callable[[], int] = time.time_ns
    started_s: float = field(init=False)
    first_chunk_s: float | None = None
    index: int = 0  # of the next chunk
    verified: list[int] = field(default_factory=list)  # completion tokens, verified
    unverified: list[int] = field(default_factory=list)  # live unverified tokens
    unverified_chunks: list[tuple[int, int]] = field(default_factory=list)  # (tokens, chars)
    text: str = ""  # concatenation of the live chunks' text
    drafted: int = 0
    accepted: int = 0
    rounds: int = 0

    def __post_init__(self) -> None:
        self.started_s = self.clock()

    @property
    def completion(self) -> list[int]:
        return self.verified + self.unverified

    def count(self, *, drafted: int, accepted: int, rounds: int) -> None:
        """Set the running totals of speculation (SLED) that chunks and the final report."""
        self.drafted, self.accepted, self.rounds = drafted, accepted, rounds

    def chunk(self, tokens: list[int], *, verified: bool, retract: int = 0) -> ResultChunk:
        """A chunk appending ``tokens`` (after withdrawing ``retract`` unverified ones)."""
        if retract:
            if retract != len(self.unverified):
                raise EdgeError(f"retract {retract} != {len(self.unverified)} unverified tokens")
            chars = sum(c for _, c in self.unverified_chunks)
            self.text = self.text[: len(self.text) - chars]
            self.unverified, self.unverified_chunks = [], []
        if verified:
            if self.unverified:
                raise EdgeError("verified tokens after unverified ones without a retract")
            self.verified.extend(tokens)
        else:
            self.unverified.extend(tokens)
        safe = self.decode(self.completion).rstrip(INCOMPLETE)
        common = len(self.text) if safe.startswith(self.text) else common_prefix(safe, self.text)
        delta = safe[common:]
        self.text += delta
        if not verified:
            self.unverified_chunks.append((len(tokens), len(delta)))
        if self.first_chunk_s is None:
            self.first_chunk_s = self.clock()
        chunk = ResultChunk(
            request=self.request,
            index=self.index,
            text=delta,
            tokens=list(tokens),
            verified=verified,
            retract=retract,
            generated=len(self.completion),
            drafted=self.drafted,
            accepted=self.accepted,
            sent_at_ns=self.wall_ns(),
        )
        self.index += 1
        return chunk

    def final(
        self, finish_reason: str, *, error: str | None = None, verification_expired: bool = False
    ) -> ResultFinal:
        """The closing record: the whole completion, its counts and timings.

        ``verification_expired``: SLED gave up waiting for a verifier; the unverified
        tokens at the end are the drafter's text, not the target's.
        """
        total_s = self.clock() - self.started_s
        ttft_s = 0.0 if self.first_chunk_s is None else self.first_chunk_s - self.started_s
        tokens = self.completion
        return ResultFinal(
            request=self.request,
            finish_reason=finish_reason,
            # As streamed: an incomplete UTF-8 character at the very end is not text yet
            # (the streamed chunks hold it back too); the token ids carry it exactly.
            text=self.decode(tokens).rstrip(INCOMPLETE),
            tokens=tokens,
            mode=self.mode,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=len(tokens),
            verified_tokens=len(self.verified),
            unverified_tokens=len(self.unverified),
            drafted=self.drafted,
            accepted=self.accepted,
            rounds=self.rounds,
            acceptance_rate=self.accepted / self.drafted if self.drafted else 0.0,
            ttft_ms=ttft_s * 1000,
            total_ms=total_s * 1000,
            tokens_per_s=len(tokens) / total_s if total_s > 0 else 0.0,
            error=error,
            verification_expired=verification_expired,
            sent_at_ns=self.wall_ns(),
        )


def common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix of ``a`` and ``b``."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def peek_request(payload: bytes) -> tuple[str | None, Format]:
    """Best effort: the request id and format of a GenerateRequest that failed to decode."""
    body = peek(payload)
    if body is None:
        return None, "msgpack"
    request = body.get("request")
    fmt: Format = "json" if body.get("format") == "json" or payload[:1] == b"{" else "msgpack"
    if not isinstance(request, str):
        return None, fmt
    try:
        check_id("request", request)
    except SchemaError:
        return None, fmt
    return request, fmt
