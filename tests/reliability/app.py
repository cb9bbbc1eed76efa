"""The app's view in reliability tests: stream a request, assemble it, check it is lossless.

:func:`stream_request` reads a device's result stream with :class:`sled.client.SledClient`
and assembles it with :class:`sled.client.ResultText` exactly as an app would, keeping
every chunk as received. :func:`assert_lossless` then checks what an app sees:

* chunk indices arrive as 0, 1, 2, … — no chunk lost; a chunk delivered again (QoS 1
  is at-least-once, e.g. after a broker restart) is identical and ignored by ResultText;
* retracts only withdraw unverified text (``ResultText`` raises otherwise);
* the assembled tokens and the final record equal the target's own greedy output,
  all verified.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.transport import Transport
from schemas import GenerateRequest, ResultChunk, ResultFinal, Topics, encode
from sled.client import ResultText, SledClient


@dataclass
class Stream:
    """One request's result stream as the app received it."""

    device: str
    request: str
    chunks: list[ResultChunk] = field(default_factory=list)  # in arrival order
    final: ResultFinal | None = None
    text: ResultText = field(default_factory=ResultText)
    arrivals_s: list[float] = field(default_factory=list)  # monotonic time of each chunk
    marks: dict[str, int] = field(default_factory=dict)  # name -> chunks received by then
    redelivered: int = 0  # chunks delivered again (QoS 1), ignored by ResultText

    def mark(self, name: str) -> None:
        """Remember how many chunks had arrived when ``name`` happened (e.g. a fault)."""
        self.marks[name] = len(self.chunks)

    @property
    def unverified_chunks(self) -> int:
        return sum(1 for c in self.chunks if not c.verified)

    @property
    def retracted_tokens(self) -> int:
        return sum(c.retract for c in self.chunks)


OnChunk = Callable[[Stream, ResultChunk], Awaitable[None]]


async def stream_request(
    bus: Transport,
    topics: Topics,
    device: str,
    prompt: str,
    *,
    max_new_tokens: int,
    request_id: str,
    on_chunk: OnChunk | None = None,
    timeout_s: float = 60.0,
    settle_s: float = 0.0,
) -> Stream:
    """Ask ``device`` for ``prompt`` and read the stream to its final record.

    ``timeout_s`` bounds the wait for each next message. ``on_chunk`` runs after each
    chunk is applied (inject faults there: the generation is provably mid-way).
    Apply errors (a bad retract) propagate: an app would show wrong text.

    With ``settle_s`` the app first follows the device (``SledClient.follow``) and waits
    ``settle_s`` before asking, so that its subscription is in the broker's persistence
    (Mosquitto saves every ``autosave_interval``) before a test crashes the broker.
    """
    client = SledClient(bus, topics)
    stream = Stream(device=device, request=request_id)
    results: AsyncIterator[ResultChunk | ResultFinal]
    if settle_s > 0:
        results = _followed(client, bus, topics, device, prompt, max_new_tokens, request_id,
                            settle_s, timeout_s)  # fmt: skip
    else:
        results = client.stream(
            device, prompt, max_new_tokens=max_new_tokens, request_id=request_id,
            timeout_s=timeout_s,
        )  # fmt: skip
    async for rec in results:
        if isinstance(rec, ResultFinal):
            stream.final = rec
            stream.text.apply(rec)
            break
        if rec.index < len(stream.chunks):  # QoS 1 redelivery: ResultText ignores it
            assert rec == stream.chunks[rec.index], f"chunk {rec.index} redelivered changed"
            stream.redelivered += 1
            stream.text.apply(rec)
            continue
        stream.chunks.append(rec)
        stream.arrivals_s.append(time.monotonic())
        if rec.index != len(stream.chunks) - 1:
            raise AssertionError(
                f"{device}/{request_id}: chunk index {rec.index} arrived as chunk "
                f"{len(stream.chunks) - 1} (indices so far {[c.index for c in stream.chunks]}): "
                "a chunk was lost"
            )
        stream.text.apply(rec)
        if on_chunk is not None:
            await on_chunk(stream, rec)
    return stream


async def _followed(
    client: SledClient,
    bus: Transport,
    topics: Topics,
    device: str,
    prompt: str,
    max_new_tokens: int,
    request_id: str,
    settle_s: float,
    timeout_s: float,
) -> AsyncIterator[ResultChunk | ResultFinal]:
    await bus.subscribe(topics.all_out(device))
    await asyncio.sleep(settle_s)
    request = GenerateRequest(
        request=request_id, prompt=prompt, max_new_tokens=max_new_tokens, sent_at_ns=time.time_ns()
    )
    await bus.publish(topics.req(device), encode(request))
    try:
        async for _dev, req, rec in client.follow(device, timeout_s=timeout_s):
            if req == request_id:
                yield rec
    finally:
        await bus.unsubscribe(topics.all_out(device))


def assert_lossless(stream: Stream, reference: list[int]) -> None:
    """The stream is token-exact equal to ``reference`` and fully verified."""
    final = stream.final
    where = f"{stream.device}/{stream.request}"
    assert final is not None, f"{where}: no final record"
    assert final.error is None and final.finish_reason in ("stop", "length"), (
        f"{where}: finished with {final.finish_reason}: {final.error}"
    )
    assert stream.text.tokens == reference, (
        f"{where}: assembled stream differs from target greedy\n"
        f"  got  {stream.text.tokens}\n  want {reference}"
    )
    assert stream.text.unverified_tokens == 0, f"{where}: unverified text left in the stream"
    assert final.tokens == reference, f"{where}: final tokens differ from target greedy"
    assert final.unverified_tokens == 0 and final.verified_tokens == len(reference)
    # The streamed text is the final text, except that the edge node holds back a
    # trailing U+FFFD (an incomplete UTF-8 character) forever when the generation ends
    # on one (edge_node bug, see test_regressions.py): tolerate exactly that.
    streamed = stream.text.text
    assert final.text.startswith(streamed) and set(final.text[len(streamed) :]) <= {"\ufffd"}, (
        f"{where}: streamed text {streamed!r} is not the final text {final.text!r}"
    )


class GreedyReference:
    """Target-only greedy continuations (``model.generate``), cached per prompt."""

    def __init__(self, target_dir: Path) -> None:
        import torch
        from tokenizers import Tokenizer
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(1)
        self._torch = torch
        self.tokenizer = Tokenizer.from_file(str(target_dir / "tokenizer.json"))
        self.model: Any = AutoModelForCausalLM.from_pretrained(target_dir)
        self.model.eval()
        self._cache: dict[tuple[str, int], list[int]] = {}

    def encode(self, prompt: str) -> list[int]:
        """The prompt's ids as the edge node encodes it (no special tokens)."""
        return list(self.tokenizer.encode(prompt, add_special_tokens=False).ids)

    def __call__(self, prompt: str, max_new_tokens: int) -> list[int]:
        key = (prompt, max_new_tokens)
        if key not in self._cache:
            torch = self._torch
            ids = self.encode(prompt)
            with torch.inference_mode():
                out = self.model.generate(
                    torch.tensor([ids]),
                    attention_mask=torch.ones(1, len(ids), dtype=torch.int64),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                )
            self._cache[key] = out[0, len(ids) :].tolist()
        return self._cache[key]
