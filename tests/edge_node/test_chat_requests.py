"""Chat requests on the edge node: the drafter folder's template, rendered on the device.

In-memory transport and the tiny Llama drafter (pure logic and wiring); the real pair
over a real Mosquitto is in tests/realpair/test_chat_e2e.py.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from edge_node.chat import ChatPrompts, ChatTemplate
from edge_node.config import EdgeConfig
from edge_node.drafter import Drafter
from edge_node.service import EdgeNode
from runtime.transport import MemoryBroker, MemoryTransport
from schemas import (
    ChatMessage,
    DraftRequest,
    ErrorCode,
    GenerateRequest,
    ResultFinal,
    SchemaError,
    Topics,
    decode,
    encode,
)
from tests.edge_node.conftest import TinyDrafter
from tests.edge_node.standin_verifier import wait_until
from tests.edge_node.test_service_clock import FakeClock

# the tiny tokenizer's one special token separates turns, as <|im_end|> does in ChatML
TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
CHAT = [ChatMessage("system", "Be brief."), ChatMessage("user", "In the beginning")]
RENDERED = "system: Be brief.<|endoftext|>user: In the beginning<|endoftext|>assistant:"


@pytest.fixture
def chat_drafter(llama_drafter: TinyDrafter, tmp_path: Path) -> Path:
    """The tiny drafter export with a chat template in its tokenizer_config.json."""
    folder = tmp_path / "drafter"
    shutil.copytree(llama_drafter.onnx_dir, folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = TEMPLATE
    config_path.write_text(json.dumps(config))
    return folder


def node(folder: Path, broker: MemoryBroker, clock: FakeClock, mode: str = "local") -> EdgeNode:
    cfg = EdgeConfig(device_id="chat-1", status_wait_ms=0, max_draft=4, threshold=0.0,
                     timeout_floor_ms=5000, timeout_ceiling_ms=5000, mode=mode)  # fmt: skip
    return EdgeNode(cfg, drafter=Drafter(folder), transport=MemoryTransport(broker),
                    clock=clock, sleep=clock.sleep)  # fmt: skip


def test_prompts_pass_through_and_messages_render(chat_drafter: Path) -> None:
    prompts = ChatPrompts.load(chat_drafter)
    assert prompts.template is not None and prompts.missing == ""
    assert prompts.text(GenerateRequest(request="r", prompt="as is")) == "as is"
    assert prompts.text(GenerateRequest(request="r", messages=CHAT)) == RENDERED


def test_a_model_without_a_template_says_so(llama_drafter: TinyDrafter) -> None:
    prompts = ChatPrompts.load(llama_drafter.onnx_dir)  # the tiny tokenizer has none
    assert prompts.template is None and "no chat template" in prompts.missing
    assert prompts.text(GenerateRequest(request="r", prompt="still fine")) == "still fine"
    with pytest.raises(SchemaError) as err:
        prompts.text(GenerateRequest(request="r", messages=CHAT))
    assert err.value.code is ErrorCode.NO_CHAT_TEMPLATE
    assert "send prompt" in err.value.message


def test_a_template_that_refuses_the_messages_is_a_bad_field() -> None:
    strict = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}"
    prompts = ChatPrompts(ChatTemplate(strict))
    with pytest.raises(SchemaError) as err:
        prompts.text(GenerateRequest(request="r", messages=CHAT))
    assert err.value.code is ErrorCode.BAD_FIELD and "user first" in err.value.message


def test_a_broken_template_is_reported_at_load(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{% for %}"}))
    prompts = ChatPrompts.load(tmp_path)
    assert prompts.template is None and "does not compile" in prompts.missing


async def test_messages_equal_the_rendered_prompt_token_for_token(chat_drafter: Path) -> None:
    broker, clock = MemoryBroker(), FakeClock()
    async with node(chat_drafter, broker, clock) as edge:
        chat = await edge.generate_text(messages=CHAT, max_new_tokens=6)
        plain = await edge.generate_text(RENDERED, max_new_tokens=6)
        ids = edge.drafter.encode(RENDERED)
    assert chat.error is None and chat.finish_reason in ("length", "stop")
    assert chat.tokens == plain.tokens and chat.text == plain.text
    assert chat.prompt_tokens == len(ids) and ids.count(0) == 2  # special token, as one id


async def test_sled_mode_sends_the_templated_prompt_to_the_verifier(chat_drafter: Path) -> None:
    broker, clock = MemoryBroker(), FakeClock()
    async with node(chat_drafter, broker, clock, mode="sled") as edge:
        await edge.generate_text(messages=CHAT, max_new_tokens=2)  # no verifier: falls back
        ids = edge.drafter.encode(RENDERED)
    drafts = [decode(m.payload, expect=DraftRequest) for m in broker.published
              if m.topic == Topics().draft("chat-1")]  # fmt: skip
    assert drafts and drafts[0].context == ids and drafts[0].prompt_len == len(ids)


async def test_request_topic_errors_reach_the_sender(
    llama_drafter: TinyDrafter, chat_drafter: Path
) -> None:
    """No template → no_chat_template; a bad role → bad_field; the node keeps serving."""
    topics = Topics()
    broker, clock = MemoryBroker(), FakeClock()
    requests = [
        b'{"k":"generate","v":1,"request":"chat-1","format":"json",'
        b'"messages":[{"role":"user","content":"hi"}]}',
        b'{"k":"generate","v":1,"request":"role-1","messages":[{"role":"robot","content":"x"}]}',
        encode(GenerateRequest(request="plain-1", prompt="In the beginning", max_new_tokens=3)),
    ]
    finals: dict[str, ResultFinal] = {}
    async with (
        node(llama_drafter.onnx_dir, broker, clock) as edge,
        MemoryTransport(broker) as app,
    ):
        serving = asyncio.create_task(edge.serve_forever())
        await app.subscribe(topics.all_out("chat-1"))
        await wait_until(lambda: topics.req("chat-1") in edge.transport.filters, 10)  # type: ignore[attr-defined]
        for payload in requests:
            await app.publish(topics.req("chat-1"), payload)
        messages = aiter(app.messages())
        while len(finals) < 3:
            rec = decode((await asyncio.wait_for(anext(messages), 30)).payload)
            if isinstance(rec, ResultFinal):
                finals[rec.request] = rec
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
    assert finals["chat-1"].finish_reason == "error"
    assert (finals["chat-1"].error or "").startswith("no_chat_template: ")
    assert (finals["role-1"].error or "").startswith("bad_field: generate.messages[0].role")
    assert finals["plain-1"].finish_reason == "length" and finals["plain-1"].error is None


def test_the_template_travels_with_the_drafter_export(
    llama_drafter: TinyDrafter, tmp_path: Path
) -> None:
    """``sled export-drafter`` copies chat_template.jinja (transformers 5's file) too."""
    from edge_node.export import export_drafter

    source = tmp_path / "hf"
    shutil.copytree(llama_drafter.hf_dir, source)
    (source / "chat_template.jinja").write_text(TEMPLATE)
    out = tmp_path / "onnx"
    export_drafter(source, out, dtype="fp32", progress=lambda _line: None)
    assert (out / "chat_template.jinja").read_text() == TEMPLATE
    prompts = ChatPrompts.load(out)
    assert prompts.text(GenerateRequest(request="r", messages=CHAT)) == RENDERED
