"""Chat on the real pair, end to end: ``mosquitto_pub`` JSON with ``messages`` to a real
``sled edge`` process (the distilled SmolLM2 drafter, int8 ONNX) and a verifier with
SmolLM2-135M-Instruct, over a real Mosquitto; the answer read with ``mosquitto_sub``.

The final text must equal the target's own greedy output (transformers ``generate``)
for the prompt transformers' ``apply_chat_template`` makes of the same messages: the
device's template rendering, its tokenization and the end-of-turn stop all agree.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from runtime.models import eos_ids
from runtime.mosquitto import Mosquitto
from runtime.transport import MqttConfig, MqttTransport
from schemas import DeviceStatus, Topics, VerifierStatus, decode
from tests.conftest import RealPair
from tests.verifier_node.helpers import running_verifier
from verifier_node.config import VerifierConfig
from verifier_node.node import make_mqtt_transport

pytestmark = [pytest.mark.realmodel, pytest.mark.integration, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
# a question SmolLM2 answers in a few tokens, then ends its turn (<|im_end|>)
MESSAGES = [{"role": "user", "content": "What is 2 + 2? Reply with the number only."}]
MAX_NEW = 16


@dataclass(frozen=True)
class Reference:
    prompt_ids: list[int]  # transformers' apply_chat_template of MESSAGES
    completion: list[int]  # the target's greedy tokens, end-of-turn included
    text: str  # decoded without special tokens, as the device decodes


@pytest.fixture(scope="module")
def reference(smollm2_pair: RealPair) -> Reference:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(str(smollm2_pair.target), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        str(smollm2_pair.target), dtype=torch.float32, local_files_only=True
    ).eval()
    ids = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, return_dict=True)
    prompt = list(ids["input_ids"])
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=MAX_NEW, do_sample=False)
    completion = [int(t) for t in out[0, len(prompt) :]]
    return Reference(prompt, completion, tok.decode(completion, skip_special_tokens=True))


def require_tools(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        if os.environ.get("CI"):
            raise RuntimeError(f"missing {missing} (mosquitto-clients)")
        pytest.skip(f"missing {missing} (apt-get install mosquitto-clients)")


@asynccontextmanager
async def edge_process(
    pair: RealPair, broker: Mosquitto, topics: Topics, device: str
) -> AsyncIterator[None]:
    cmd = [
        sys.executable, "-m", "sled.cli", "edge",
        "--drafter-dir", str(pair.drafter_int8),
        "--broker-url", broker.url,
        "--device-id", device,
        "--topic-prefix", topics.prefix,
        "--log-level", "warning",
    ]  # fmt: skip
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, env=env)
    try:
        yield
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def serving(app: MqttTransport, device: str, verifier: str) -> None:
    """Until the device announced itself twice (on connect, then once its request topic is
    subscribed) and the verifier is online."""
    online, verifier_online = 0, False
    async for msg in app.messages():
        rec = decode(msg.payload)
        if isinstance(rec, DeviceStatus) and rec.device == device and rec.online:
            online += 1
        if isinstance(rec, VerifierStatus) and rec.verifier == verifier and rec.online:
            verifier_online = True
        if online >= 2 and verifier_online:
            return


async def mosquitto_chat(broker: Mosquitto, topics: Topics, device: str) -> list[dict[str, Any]]:
    """Publish MESSAGES with mosquitto_pub; the JSON results as mosquitto_sub prints them."""
    request = f"chat-{uuid.uuid4().hex[:6]}"
    where = ["-h", broker.host, "-p", str(broker.port), "-q", "1"]
    out = topics.out(device, request)
    sub = await asyncio.create_subprocess_exec(
        "mosquitto_sub", *where, "-t", out, stdout=asyncio.subprocess.PIPE
    )
    assert sub.stdout is not None

    async def pub(topic: str, payload: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            "mosquitto_pub", *where, "-t", topic, "-m", payload
        )
        assert await proc.wait() == 0

    results: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(240):
            while True:  # mosquitto_sub is subscribed once it prints a probe
                await pub(out, "probe")
                try:
                    if (await asyncio.wait_for(sub.stdout.readline(), 0.5)).strip() == b"probe":
                        break
                except TimeoutError:
                    continue
            body = {"k": "generate", "v": 1, "request": request, "format": "json",
                    "max_new_tokens": MAX_NEW, "messages": MESSAGES}  # fmt: skip
            await pub(topics.req(device), json.dumps(body))
            while not results or results[-1]["k"] != "final":
                line = (await sub.stdout.readline()).decode()
                assert line, "mosquitto_sub ended before the final result"
                if line.startswith("{"):  # not a late probe
                    results.append(json.loads(line))
    finally:
        sub.terminate()
        await sub.wait()
    return results


async def test_chat_through_mosquitto_equals_the_targets_greedy_output(
    smollm2_pair: RealPair,
    reference: Reference,
    broker: Mosquitto,
    mqtt_config: MqttConfig,
    topics: Topics,
) -> None:
    require_tools("mosquitto_pub", "mosquitto_sub")
    stop = set(eos_ids(smollm2_pair.target))
    assert reference.completion[-1] in stop  # the answer ends its turn: the stop is tested
    assert 2 < len(reference.completion) < MAX_NEW
    device = f"pi-{uuid.uuid4().hex[:6]}"
    config = VerifierConfig(
        verifier_id=f"v-{uuid.uuid4().hex[:6]}",
        broker_url=broker.url,
        topic_prefix=topics.prefix,
        max_batch=4,
        max_wait_ms=2.0,
    )
    async with MqttTransport(mqtt_config) as app:
        await app.subscribe(topics.device_status(device))
        await app.subscribe(topics.verifier_status(config.verifier_id))
        async with (
            running_verifier(config, smollm2_pair.target, make_mqtt_transport),
            edge_process(smollm2_pair, broker, topics, device),
        ):
            await asyncio.wait_for(serving(app, device, config.verifier_id), 120)
            results = await mosquitto_chat(broker, topics, device)
    *chunks, final = results
    assert final["finish_reason"] == "stop", final.get("error")
    assert final["tokens"] == reference.completion  # token for token, end-of-turn included
    assert final["text"] == reference.text and reference.text.strip()
    assert final["prompt_tokens"] == len(reference.prompt_ids)  # the same templated prompt
    assert final["unverified_tokens"] == 0 and final["mode"] == "sled"
    assert "".join(c["text"] for c in chunks) == final["text"]
    assert all(c["verified"] for c in chunks)
