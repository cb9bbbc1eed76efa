"""Read generated text from the result topics: the Python API for apps.

    async with MqttTransport(MqttConfig.from_url("mqtt://127.0.0.1:1883")) as bus:
        client = SledClient(bus)
        async for chunk in client.stream("pi-1", "In the beginning"):
            print(chunk.text, end="", flush=True)
        final = await client.generate("pi-1", messages=[{"role": "user", "content": "Hi!"}])

``stream`` sends a ``GenerateRequest`` to the device's request topic and yields its
``ResultChunk``s, then the ``ResultFinal``. ``follow`` watches everything a device
publishes (requests made by others too). ``ResultText`` assembles chunks into the
current text, applying ``retract`` (unverified text withdrawn after a fallback).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

from runtime.transport import Transport, TransportTimeout
from schemas import (
    DEFAULT_LIMITS,
    ChatMessage,
    ErrorCode,
    GenerateRequest,
    ResultChunk,
    ResultFinal,
    SamplingParams,
    SchemaError,
    Topics,
    decode,
)
from schemas.codec import Format, encode

Result = ResultChunk | ResultFinal
Messages = Sequence[ChatMessage | Mapping[str, str]]


def new_request_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass
class ResultText:
    """The text of one request so far; ``apply`` each chunk in order.

    Verified text is final. Unverified chunks (fallback) are provisional: a later chunk
    with ``retract = n`` withdraws the last ``n`` tokens, which are always unverified.
    A chunk whose ``index`` was applied already (a QoS 1 redelivery) is ignored.
    """

    chunks: list[ResultChunk] = field(default_factory=list)
    final: ResultFinal | None = None
    next_index: int = 0  # index of the next new chunk; lower ones were applied already

    def apply(self, result: Result) -> None:
        if isinstance(result, ResultFinal):
            self.final = result
            return
        if result.index < self.next_index:
            return  # delivered again (QoS 1 is at-least-once): already applied
        self.next_index = result.index + 1
        remaining = result.retract
        while remaining > 0:
            if not self.chunks or self.chunks[-1].verified:
                raise ValueError(
                    f"chunk {result.index} retracts {result.retract} tokens, "
                    "more than the unverified text holds"
                )
            last = self.chunks.pop()
            if len(last.tokens) > remaining:
                raise ValueError(f"chunk {result.index} retracts part of chunk {last.index}")
            remaining -= len(last.tokens)
        self.chunks.append(result)

    @property
    def text(self) -> str:
        return "".join(c.text for c in self.chunks)

    @property
    def tokens(self) -> list[int]:
        return [t for c in self.chunks for t in c.tokens]

    @property
    def unverified_tokens(self) -> int:
        return sum(len(c.tokens) for c in self.chunks if not c.verified)


class SledClient:
    """Ask devices for text and read their result streams over a transport."""

    def __init__(self, transport: Transport, topics: Topics | None = None) -> None:
        self._bus = transport
        self._topics = topics or Topics()

    async def stream(
        self,
        device: str,
        prompt: str = "",
        *,
        messages: Messages | None = None,
        max_new_tokens: int = 64,
        params: SamplingParams | None = None,
        mode: str = "sled",
        fmt: Format = "msgpack",
        request_id: str | None = None,
        timeout_s: float = 120.0,
    ) -> AsyncIterator[Result]:
        """Send a request to ``device`` and yield its chunks, then its final result.

        Give ``prompt`` (text) or ``messages`` (a chat conversation: ``ChatMessage``s or
        ``{"role": ..., "content": ...}`` maps; the device applies its model's chat
        template). A request that breaks the contract raises ``SchemaError`` before
        anything is sent. ``timeout_s`` bounds the wait for each next message (not the
        whole generation).
        """
        request = request_id or new_request_id()
        message = GenerateRequest(
            request=request,
            prompt=prompt,
            messages=None if messages is None else [_chat_message(m) for m in messages],
            max_new_tokens=max_new_tokens,
            params=params or SamplingParams(),
            mode=mode,
            format=fmt,
            sent_at_ns=time.time_ns(),
        )
        message.check(DEFAULT_LIMITS)
        out_topic = self._topics.out(device, request)
        await self._bus.subscribe(out_topic)
        await self._bus.publish(self._topics.req(device), encode(message, fmt))
        try:
            async for result in self._results(out_topic, timeout_s):
                yield result
                if isinstance(result, ResultFinal):
                    return
        finally:
            try:
                await self._bus.unsubscribe(out_topic)
            except Exception:  # best effort on the way out
                pass

    async def generate(self, device: str, prompt: str = "", **kwargs: object) -> ResultFinal:
        """Run one request to the end; returns the final result (text included)."""
        async for result in self.stream(device, prompt, **kwargs):  # type: ignore[arg-type]
            if isinstance(result, ResultFinal):
                return result
        raise RuntimeError("result stream ended without a final message")

    async def follow(
        self, device: str = "+", *, timeout_s: float | None = None
    ) -> AsyncIterator[tuple[str, str, Result]]:
        """Yield ``(device, request, result)`` for everything ``device`` publishes (``+``: all)."""
        flt = self._topics.all_out(device)
        await self._bus.subscribe(flt)
        async for topic, result in self._decoded(timeout_s):
            parsed = self._topics.parse(topic)
            assert parsed.device is not None and parsed.request is not None
            yield parsed.device, parsed.request, result

    async def _results(self, out_topic: str, timeout_s: float) -> AsyncIterator[Result]:
        async for topic, result in self._decoded(timeout_s):
            if topic == out_topic:
                yield result

    async def _decoded(self, timeout_s: float | None) -> AsyncIterator[tuple[str, Result]]:
        messages = self._bus.messages().__aiter__()
        while True:
            try:
                msg = await asyncio.wait_for(messages.__anext__(), timeout_s)
            except TimeoutError as exc:
                raise TransportTimeout(f"no result message within {timeout_s:g} s") from exc
            if msg.retain:
                # Results are never retained (the contract): a stored one was left by
                # someone else (e.g. a compromised device) and is not this stream's.
                continue
            try:
                result = decode(msg.payload, expect=(ResultChunk, ResultFinal))
            except SchemaError:
                continue  # not a result (or not ours to read): ignore
            assert isinstance(result, ResultChunk | ResultFinal)
            yield msg.topic, result


def _chat_message(message: ChatMessage | Mapping[str, str]) -> ChatMessage:
    if isinstance(message, ChatMessage):
        return message
    role, content = message.get("role"), message.get("content")
    if not isinstance(role, str) or not isinstance(content, str):
        raise SchemaError(
            ErrorCode.BAD_FIELD, f"a chat message needs a role and a content string: {message!r}"
        )
    return ChatMessage(role=role, content=content)
