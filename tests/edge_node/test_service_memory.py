"""EdgeNode on the in-memory bus: API errors, failures become error finals."""

from __future__ import annotations

import pytest

from edge_node.config import EdgeConfig
from edge_node.drafter import Drafter
from edge_node.service import EdgeNode
from runtime.transport import MemoryBroker, MemoryTransport
from schemas import ResultChunk, ResultFinal, Topics, decode
from tests.edge_node.conftest import TinyDrafter


def node_for(drafter: Drafter, broker: MemoryBroker) -> EdgeNode:
    cfg = EdgeConfig(device_id="mem-1", status_wait_ms=0, max_draft=4)
    return EdgeNode(cfg, drafter=drafter, transport=MemoryTransport(broker))


async def test_local_mode_publishes_results_and_status(llama_drafter: TinyDrafter) -> None:
    broker = MemoryBroker()
    drafter = Drafter(llama_drafter.onnx_dir)
    async with node_for(drafter, broker) as node:
        recs = [r async for r in node.generate("In the beginning", max_new_tokens=9, mode="local")]
    assert [type(r) for r in recs] == [ResultChunk] * 3 + [ResultFinal]  # chunks of max_draft
    out = [decode(m.payload) for m in broker.published if "/out/" in m.topic]
    assert out == recs
    status = [m for m in broker.published if m.topic == Topics().device_status("mem-1")]
    assert status and status[-1].retain  # offline status on a clean exit


async def test_bad_arguments_raise(llama_drafter: TinyDrafter) -> None:
    async with node_for(Drafter(llama_drafter.onnx_dir), MemoryBroker()) as node:
        with pytest.raises(ValueError, match="max_new_tokens"):
            await node.generate_text("hi", max_new_tokens=-1)
        with pytest.raises(ValueError, match="mode"):
            await node.generate_text("hi", mode="turbo")


async def test_drafter_failure_is_an_error_final_and_the_node_goes_on(
    gpt2_drafter: TinyDrafter,
) -> None:
    async with node_for(Drafter(gpt2_drafter.onnx_dir), MemoryBroker()) as node:
        # GPT-2 has 512 learned positions: a 600-token context cannot be drafted
        long_prompt = "In the beginning God created the heaven and the earth. " * 60
        final = await node.generate_text(long_prompt, max_new_tokens=4, mode="local")
        assert final.finish_reason == "error" and final.error
        ok = await node.generate_text("In the beginning", max_new_tokens=4, mode="local")
        assert ok.finish_reason == "length" and len(ok.tokens) == 4


@pytest.mark.parametrize(
    ("prompt", "why"),
    [
        ("x" * 65536, "characters"),  # the wire's limit: refused before tokenizing
        ("In the beginning God created the heaven and the earth. " * 60, "tokens"),  # ~700
    ],
)
async def test_a_prompt_over_the_limit_is_an_error_final_before_any_model_work(
    llama_drafter: TinyDrafter, prompt: str, why: str
) -> None:
    drafter = Drafter(llama_drafter.onnx_dir)  # 512 positions: at most 511 prompt tokens
    fed: list[int] = []
    feed = drafter.feed
    drafter.feed = lambda state, ids: fed.append(len(ids)) or feed(state, ids)  # type: ignore[method-assign]
    async with node_for(drafter, MemoryBroker()) as node:
        final = await node.generate_text(prompt, max_new_tokens=4, mode="local")
        assert final.finish_reason == "error" and final.error is not None
        assert final.error.startswith("DrafterError: prompt too long") and why in final.error
        assert fed == []  # the drafter never saw it
        ok = await node.generate_text("In the beginning", max_new_tokens=4, mode="local")
        assert ok.finish_reason == "length" and len(ok.tokens) == 4
