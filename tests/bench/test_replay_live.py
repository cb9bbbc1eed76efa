"""Trace replay sends what the real edge node sends: same verdicts, same prompt.

A tiny random-weight Llama target and a noisy copy of it as the drafter (so some
drafts are accepted and some are not), the real verifier (``verifier_node.service``)
and the real edge node (``edge_node.service``) on a real Mosquitto. The edge node
generates with asynchronous drafting off (so its rounds do not depend on timing);
then the simulated device replays the drafter trace recorded with the same ONNX
drafter. Both must get exactly the same verdicts, and the replay must be lossless.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtime.transport import MqttConfig, MqttTransport
from schemas import Topics
from schemas.codec import decode
from schemas.errors import SchemaError
from schemas.messages import Verdict, VerifierStatus

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_NEW = 24
PROMPT = "In the beginning God created the heaven"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(target HF dir, drafter ONNX dir)."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    from edge_node.export import export_drafter
    from tests.tiny_models import make_tiny_model

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("replay-live")
    target = make_tiny_model("llama", root / "target", vocab_size=512, seed=0)
    drafter_hf = root / "drafter"
    shutil.copytree(target, drafter_hf)
    model = AutoModelForCausalLM.from_pretrained(str(drafter_hf), local_files_only=True)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.add_(torch.randn(p.shape, generator=gen) * p.std() * 0.15)
    model.save_pretrained(drafter_hf, safe_serialization=True)
    onnx = root / "drafter-onnx"
    export_drafter(drafter_hf, onnx, dtype="fp32", progress=lambda _line: None)
    return target, onnx


@contextlib.asynccontextmanager
async def _verifier(target: Path, mqtt: MqttConfig, topics: Topics) -> AsyncIterator[None]:
    from verifier_node.config import VerifierConfig
    from verifier_node.service import serve

    cfg = VerifierConfig(
        verifier_id="replay-test",
        broker_url=f"mqtt://{mqtt.host}:{mqtt.port}",
        topic_prefix=topics.prefix,
        model_dir=str(target),
        threads=1,
    )
    task = asyncio.create_task(serve(cfg))
    try:
        async with MqttTransport(mqtt.with_(persistent=False)) as spy:
            await spy.subscribe(topics.verifier_status("replay-test"))
            async with asyncio.timeout(60):
                async for msg in spy.messages():
                    status = decode(msg.payload, expect=VerifierStatus)
                    if status.online:
                        break
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _spy_verdicts(
    mqtt: MqttConfig, topic: str, out: list[tuple[int, int]], ready: asyncio.Event
) -> None:
    async with MqttTransport(mqtt.with_(persistent=False)) as spy:
        await spy.subscribe(topic)
        ready.set()
        async for msg in spy.messages():
            with contextlib.suppress(SchemaError):
                v = decode(msg.payload)
                if isinstance(v, Verdict) and v.ok:
                    out.append((v.accepted, v.token))


async def test_replay_gets_the_same_verdicts_as_the_live_edge_node(
    models: tuple[Path, Path], mqtt_config: MqttConfig, topics: Topics
) -> None:
    from bench.sim.fleet import FleetConfig, run_point
    from bench.sim.record import eos_ids, greedy_reference, record_drafter_traces
    from bench.sim.trace import DraftPolicy, PromptTrace
    from edge_node.config import EdgeConfig
    from edge_node.drafter import Drafter
    from edge_node.service import EdgeNode

    target, onnx = models
    drafter = Drafter(onnx)
    prompt_ids = drafter.encode(PROMPT)
    ref = greedy_reference(target, [prompt_ids], MAX_NEW, target.parent / "cache", threads=1)
    traces, _ = record_drafter_traces(onnx, [prompt_ids], ref, max_new_tokens=MAX_NEW, chain_len=10)
    eos = eos_ids(target)
    trace = PromptTrace(trace_args := traces[0].prompt, traces[0].reference, traces[0].chains,
                        traces[0].confidences, MAX_NEW, eos)  # fmt: skip
    assert trace_args == prompt_ids

    async with _verifier(target, mqtt_config, topics):
        live: list[tuple[int, int]] = []
        ready = asyncio.Event()
        spy = asyncio.create_task(
            _spy_verdicts(mqtt_config, topics.verdict("live-edge"), live, ready)
        )
        await ready.wait()
        edge_cfg = EdgeConfig(
            device_id="live-edge",
            broker_url=f"mqtt://{mqtt_config.host}:{mqtt_config.port}",
            topic_prefix=topics.prefix,
            drafter_dir=str(onnx),
            max_draft=3,
            threshold=0.0,
            async_drafting=False,
            max_new_tokens=MAX_NEW,
        )
        async with EdgeNode(edge_cfg) as node:
            final = await node.generate_text(PROMPT, max_new_tokens=MAX_NEW, publish=False)
        await asyncio.sleep(0.3)
        spy.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await spy
        assert final.finish_reason in ("stop", "length"), final

        cfg = FleetConfig(
            mode="sled",
            devices=1,
            draft_tokens_per_s=1e6,
            policy=DraftPolicy(3, 0.0),
            async_draft=False,
            warmup_s=0.0,
            measure_s=60.0,
            max_sessions=1,
            fingerprint=drafter.fingerprint,
            topics=topics,
        )
        res = await run_point(mqtt_config, [trace], cfg)

    assert res.lossless, res.violations
    assert res.sessions_done == 1
    assert res.verdicts == live
    accepted = [a for a, _ in live]
    assert 0 < sum(accepted) < 3 * len(accepted), "drafts should be partly accepted"
