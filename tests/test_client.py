"""The app-side client: chunk assembly with retraction, and stream() over a bus."""

from __future__ import annotations

import asyncio

import pytest

from runtime.transport import MemoryBroker, MemoryTransport
from schemas import GenerateRequest, ResultChunk, ResultFinal, Topics, decode, encode
from sled.client import ResultText, SledClient


def chunk(index: int, tokens: list[int], *, verified: bool = True, retract: int = 0) -> ResultChunk:
    return ResultChunk(
        request="r1",
        index=index,
        text="".join(f"<{t}>" for t in tokens),
        tokens=tokens,
        verified=verified,
        retract=retract,
    )


def test_result_text_appends_verified_chunks() -> None:
    text = ResultText()
    text.apply(chunk(0, [1, 2]))
    text.apply(chunk(1, [3]))
    assert text.tokens == [1, 2, 3]
    assert text.text == "<1><2><3>"


def test_result_text_retracts_only_unverified_tail() -> None:
    text = ResultText()
    text.apply(chunk(0, [1, 2]))
    text.apply(chunk(1, [7, 8], verified=False))  # fallback: provisional
    text.apply(chunk(2, [9], verified=False))
    assert text.unverified_tokens == 3
    text.apply(chunk(3, [7, 4], retract=3))  # verifier back: withdraw 3, append verified
    assert text.tokens == [1, 2, 7, 4]
    assert text.unverified_tokens == 0


@pytest.mark.parametrize("retract", [1, 3])
def test_result_text_refuses_to_retract_verified_or_partial(retract: int) -> None:
    text = ResultText()
    text.apply(chunk(0, [1, 2]))
    text.apply(chunk(1, [5, 6], verified=False))
    with pytest.raises(ValueError):
        text.apply(chunk(2, [3], retract=retract))


async def test_stream_sends_request_and_yields_until_final() -> None:
    broker = MemoryBroker()
    topics = Topics("t/client")
    async with MemoryTransport(broker) as device_bus, MemoryTransport(broker) as app_bus:
        await device_bus.subscribe(topics.req("pi-1"))

        async def fake_device() -> None:
            async for msg in device_bus.messages():
                req = decode(msg.payload, expect=GenerateRequest)
                out = topics.out("pi-1", req.request)
                first = ResultChunk(request=req.request, index=0, text="ab", tokens=[1, 2])
                final = ResultFinal(
                    request=req.request, finish_reason="length", text="ab", tokens=[1, 2]
                )
                fmt = "json" if req.format == "json" else "msgpack"
                await device_bus.publish(out, encode(first, fmt))
                await device_bus.publish(out, encode(final, fmt))
                return

        task = asyncio.create_task(fake_device())
        got = [
            r
            async for r in SledClient(app_bus, topics).stream("pi-1", "hi", fmt="json", timeout_s=5)
        ]
        await task
    assert [type(r) for r in got] == [ResultChunk, ResultFinal]
    assert isinstance(got[-1], ResultFinal) and got[-1].text == "ab"


async def test_follow_ignores_retained_results() -> None:
    """A result stored retained on out/… (never part of the contract: a compromised
    device can leave one) is not delivered to the app as a result."""
    broker = MemoryBroker()
    topics = Topics("t/retained")
    final = ResultFinal(request="r1", finish_reason="length", text="ab", tokens=[1, 2])
    async with MemoryTransport(broker) as evil, MemoryTransport(broker) as app_bus:
        await evil.publish(topics.out("pi-2", "old"), encode(final), retain=True)
        follow = SledClient(app_bus, topics).follow(timeout_s=0.2).__aiter__()
        first = asyncio.ensure_future(follow.__anext__())
        await asyncio.sleep(0.05)
        await evil.publish(topics.out("pi-2", "r1"), encode(final))  # live: delivered
        device, request, result = await first
    assert (device, request) == ("pi-2", "r1") and isinstance(result, ResultFinal)
