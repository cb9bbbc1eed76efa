"""The edge node against a real Mosquitto and a scripted stand-in verifier."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from edge_node.config import EdgeConfig
from edge_node.drafter import Drafter
from edge_node.service import EdgeNode
from runtime.mosquitto import Mosquitto
from runtime.transport import MqttConfig, MqttTransport
from schemas import (
    DeviceStatus,
    GenerateRequest,
    ResultChunk,
    ResultFinal,
    SamplingParams,
    Topics,
    decode,
    encode,
)
from tests.edge_node.conftest import TinyDrafter
from tests.edge_node.standin_verifier import StandInVerifier, scripted_target, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

PROMPT = "In the beginning God created"
MAX_NEW = 40
DEVIATE_AT = frozenset({2, 6, 7, 13, 21, 30})  # completion positions where target != drafter


@dataclass(frozen=True)
class Scenario:
    drafter: Drafter
    prompt: list[int]
    target: list[int]  # the target's greedy completion (MAX_NEW tokens or up to EOS)


@pytest.fixture(scope="module")
def scenario(llama_drafter: TinyDrafter) -> Scenario:
    drafter = Drafter(llama_drafter.onnx_dir, threads=1)
    prompt = drafter.encode(PROMPT)
    target = scripted_target(llama_drafter.hf_dir, prompt, MAX_NEW, DEVIATE_AT)
    return Scenario(drafter, prompt, target)


def edge_config(broker: Mosquitto, topics: Topics, **changes: object) -> EdgeConfig:
    base = EdgeConfig(
        device_id=f"pi-{uuid.uuid4().hex[:6]}",
        broker_url=broker.url,
        topic_prefix=topics.prefix,
        threshold=0.0,  # random tiny models are never confident: always draft max_draft
        max_draft=4,
        timeout_floor_ms=100,
        timeout_ceiling_ms=500,
        fallback_after=2,
        status_wait_ms=100,
    )
    return base.with_(**changes)


def standin(sc: Scenario, mqtt_config: MqttConfig, topics: Topics, **kw: object) -> StandInVerifier:
    return StandInVerifier(
        mqtt=mqtt_config,
        topics=topics,
        prompt=sc.prompt,
        target=sc.target,
        eos_ids=sc.drafter.eos_ids,
        fingerprint=sc.drafter.fingerprint,
        **kw,  # type: ignore[arg-type]
    )


async def collect(
    records: AsyncIterator[ResultChunk | ResultFinal],
) -> tuple[list[ResultChunk], ResultFinal]:
    chunks: list[ResultChunk] = []
    async for rec in records:
        if isinstance(rec, ResultChunk):
            chunks.append(rec)
        else:
            return chunks, rec
    raise AssertionError("no ResultFinal")


def replay(chunks: list[ResultChunk]) -> tuple[list[int], str]:
    """What an app shows: apply chunks in order, honouring retract."""
    parts: list[tuple[list[int], str]] = []
    for c in chunks:
        if c.retract:
            n = c.retract
            while n:
                toks, _ = parts.pop()
                n -= len(toks)
            assert n == 0
        parts.append((c.tokens, c.text))
    return [t for toks, _ in parts for t in toks], "".join(text for _, text in parts)


async def test_normal_flow_equals_target_greedy(
    scenario: Scenario, broker: Mosquitto, mqtt_config: MqttConfig, topics: Topics
) -> None:
    cfg = edge_config(broker, topics)
    async with (
        standin(scenario, mqtt_config, topics) as verifier,
        EdgeNode(cfg, drafter=scenario.drafter) as node,
        MqttTransport(mqtt_config) as app,
    ):
        await app.subscribe(topics.all_out(cfg.device_id))
        chunks, final = await collect(
            node.generate(PROMPT, max_new_tokens=MAX_NEW, request_id="req-1", fmt="json")
        )
        assert final.finish_reason in ("length", "stop"), final.error
        assert final.tokens == scenario.target
        assert final.text == scenario.drafter.decode(scenario.target)
        assert all(c.verified for c in chunks) and [c.index for c in chunks] == list(
            range(len(chunks))
        )
        assert replay(chunks) == (scenario.target, "".join(c.text for c in chunks))
        assert final.unverified_tokens == 0 and final.verified_tokens == len(scenario.target)
        assert 0 < final.accepted < final.drafted  # the deviations were rejections
        assert final.rounds == len(verifier.sent)
        assert verifier.received[0].context == scenario.prompt
        assert all(r.context is None for r in verifier.received[1:])
        # the app saw the same stream on …/out/req-1, in JSON
        got: list[object] = []

        async def read() -> None:
            async for msg in app.messages():
                assert msg.payload.startswith(b"{")
                got.append(decode(msg.payload))
                if isinstance(got[-1], ResultFinal):
                    return

        await asyncio.wait_for(read(), 5)
        assert got == [*chunks, final]


async def test_dropped_verdict_times_out_and_resends(
    scenario: Scenario, broker: Mosquitto, mqtt_config: MqttConfig, topics: Topics
) -> None:
    cfg = edge_config(broker, topics, fallback_after=3)
    lost = lambda req, n: req.seq == 2 and n == 3  # noqa: E731  (the verdict of seq 2 is lost)
    async with (
        standin(scenario, mqtt_config, topics, drop=lost) as verifier,
        EdgeNode(cfg, drafter=scenario.drafter) as node,
    ):
        chunks, final = await collect(node.generate(PROMPT, max_new_tokens=MAX_NEW))
    assert final.tokens == scenario.target
    assert all(c.verified for c in chunks)
    seq2 = [r for r in verifier.received if r.seq == 2]
    assert len(seq2) == 2  # sent, then resent after the timeout
    assert seq2[0].start == seq2[1].start
    assert seq2[1].draft[: len(seq2[0].draft)] == seq2[0].draft  # outstanding + new drafts
    assert len(verifier.dropped) == 1
    assert verifier.sent.count(verifier.dropped[0]) == 1  # the stored verdict, sent again


async def test_silent_verifier_falls_back_to_unverified_local_text(
    scenario: Scenario, broker: Mosquitto, mqtt_config: MqttConfig, topics: Topics
) -> None:
    cfg = edge_config(broker, topics, timeout_ceiling_ms=300, verify_deadline_s=0.5)
    async with standin(scenario, mqtt_config, topics) as verifier:
        async with EdgeNode(cfg, drafter=scenario.drafter) as node:
            gen = node.generate(PROMPT, max_new_tokens=MAX_NEW)
            first = await anext(gen)
            assert isinstance(first, ResultChunk) and first.verified
            verifier.silent = True  # the verifier goes away after the first verdict
            chunks, final = await collect(gen)
        chunks.insert(0, first)
    assert final.finish_reason in ("length", "stop")
    assert final.unverified_tokens > 0 and final.verified_tokens >= 1
    assert final.verification_expired and node.verification_expired == 1  # past the deadline
    unverified = [c for c in chunks if not c.verified]
    assert unverified and all(not c.verified for c in chunks[chunks.index(unverified[0]) :])
    # never mixed: verified chunks first, then only unverified ones; no retract
    assert all(c.retract == 0 for c in chunks)
    verified_part = final.tokens[: final.verified_tokens]
    assert verified_part == scenario.target[: final.verified_tokens]
    assert len(final.tokens) == MAX_NEW or final.tokens[-1] in scenario.drafter.eos_ids
    assert replay(chunks)[0] == final.tokens
    probes = [r for r in verifier.received if r.context is not None][1:]
    assert probes  # fallback probes carry the last verified context
    assert all(p.context == scenario.prompt + verified_part for p in probes)


async def test_verifier_back_resyncs_and_final_equals_target(
    scenario: Scenario, broker: Mosquitto, mqtt_config: MqttConfig, topics: Topics
) -> None:
    cfg = edge_config(broker, topics, timeout_ceiling_ms=400)
    async with (
        standin(scenario, mqtt_config, topics) as verifier,
        EdgeNode(cfg, drafter=scenario.drafter) as node,
    ):
        chunks: list[ResultChunk] = []
        final: ResultFinal | None = None
        async for rec in node.generate(PROMPT, max_new_tokens=MAX_NEW):
            if isinstance(rec, ResultFinal):
                final = rec
                break
            chunks.append(rec)
            if len(chunks) == 2:
                verifier.silent = True  # gone after two verdicts
            if not rec.verified and verifier.silent:
                await verifier.resume()  # back as soon as the device fell back
    assert final is not None
    assert final.tokens == scenario.target, final
    assert final.unverified_tokens == 0
    resync = [c for c in chunks if c.retract]
    assert len(resync) == 1 and resync[0].verified
    before = chunks[: chunks.index(resync[0])]
    assert sum(len(c.tokens) for c in before if not c.verified) == resync[0].retract
    assert all(c.verified for c in chunks[chunks.index(resync[0]) :])
    tokens, text = replay(chunks)
    assert tokens == scenario.target
    assert text == final.text


async def test_generate_request_topic_and_bad_input(
    scenario: Scenario, broker: Mosquitto, mqtt_config: MqttConfig, topics: Topics
) -> None:
    cfg = edge_config(broker, topics)
    async with (
        standin(scenario, mqtt_config, topics),
        EdgeNode(cfg, drafter=scenario.drafter) as node,
        MqttTransport(mqtt_config) as app,
    ):
        serving = asyncio.create_task(node.serve_forever())
        await app.subscribe(topics.all_out(cfg.device_id))
        await app.subscribe(topics.device_status(cfg.device_id))
        await asyncio.sleep(0.2)
        req_topic = topics.req(cfg.device_id)
        await app.publish(req_topic, b"\xc1 not msgpack")  # malformed: no request id, log only
        await app.publish(req_topic, b'{"k":"generate","v":1,"request":"bad-1","prompt":""}')
        await app.publish(req_topic, b'{"k":"generate","v":9,"request":"bad-2","prompt":"x"}')
        good = GenerateRequest(request="good-1", prompt=PROMPT, max_new_tokens=12)
        await app.publish(req_topic, encode(good))
        finals: dict[str, ResultFinal] = {}
        status: list[DeviceStatus] = []

        async def read() -> None:
            async for msg in app.messages():
                rec = decode(msg.payload)
                if isinstance(rec, DeviceStatus):
                    status.append(rec)
                elif isinstance(rec, ResultFinal):
                    finals[rec.request] = rec
                    if len(finals) == 3:
                        return

        await asyncio.wait_for(read(), 10)
        assert finals["bad-1"].finish_reason == "error" and "prompt" in (
            finals["bad-1"].error or ""
        )
        assert finals["bad-2"].finish_reason == "error"
        assert "version" in (finals["bad-2"].error or "")
        assert finals["good-1"].tokens == scenario.target[:12]
        assert status and status[0].online and status[0].fingerprint == scenario.drafter.fingerprint
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
    # after a clean exit the retained status says offline
    async with MqttTransport(mqtt_config) as probe:
        await probe.subscribe(topics.device_status(cfg.device_id))
        msg = await asyncio.wait_for(anext(aiter(probe.messages())), 5)
        assert not decode(msg.payload, expect=DeviceStatus).online


async def test_tokenizer_mismatch_is_a_clear_error(
    scenario: Scenario, broker: Mosquitto, mqtt_config: MqttConfig, topics: Topics
) -> None:
    cfg = edge_config(broker, topics, status_wait_ms=500)
    sc = Scenario(scenario.drafter, scenario.prompt, scenario.target)
    v = standin(sc, mqtt_config, topics)
    v.fingerprint = "0123456789abcdef"
    async with v, EdgeNode(cfg, drafter=scenario.drafter) as node:
        await wait_until(lambda: bool(node.assignment.verifiers), 5)
        final = await node.generate_text(PROMPT, max_new_tokens=8)
    assert final.finish_reason == "error"
    assert "tokenizer mismatch" in (final.error or "") and "0123456789abcdef" in (final.error or "")


async def test_local_and_centralized_modes(
    scenario: Scenario, broker: Mosquitto, mqtt_config: MqttConfig, topics: Topics
) -> None:
    cfg = edge_config(broker, topics)
    async with (
        standin(scenario, mqtt_config, topics) as verifier,
        EdgeNode(cfg, drafter=scenario.drafter) as node,
    ):
        chunks, local = await collect(node.generate(PROMPT, max_new_tokens=10, mode="local"))
        assert local.mode == "local" and local.unverified_tokens == len(local.tokens) == 10
        assert all(not c.verified for c in chunks)
        d = scenario.drafter
        assert local.tokens[0] == int(d.feed(d.new_state(), scenario.prompt).argmax())
        chunks, central = await collect(
            node.generate(PROMPT, max_new_tokens=12, mode="centralized")
        )
        assert central.mode == "centralized" and central.tokens == scenario.target[:12]
        assert all(c.verified for c in chunks) and len(verifier.central) == 1
        sampled = await node.generate_text(
            PROMPT, max_new_tokens=10, mode="local", params=SamplingParams(temperature=1.0, seed=3)
        )
        again = await node.generate_text(
            PROMPT, max_new_tokens=10, mode="local", params=SamplingParams(temperature=1.0, seed=3)
        )
        assert sampled.tokens == again.tokens  # seeded


async def test_sampling_drafts_carry_q(
    scenario: Scenario, broker: Mosquitto, mqtt_config: MqttConfig, topics: Topics
) -> None:
    cfg = edge_config(broker, topics)
    params = SamplingParams(temperature=0.9, top_k=20, top_p=0.95, seed=5)
    async with (
        standin(scenario, mqtt_config, topics) as verifier,
        EdgeNode(cfg, drafter=scenario.drafter) as node,
    ):
        final = await node.generate_text(PROMPT, max_new_tokens=8, params=params)
    assert final.finish_reason in ("length", "stop")
    for req in verifier.received:
        assert req.q_ids is not None and req.q_probs is not None
        assert len(req.q_ids) == len(req.draft)
        for tok, ids, probs in zip(req.draft, req.q_ids, req.q_probs, strict=True):
            assert tok in ids and len(ids) <= 20 and abs(sum(probs) - 1) < 1e-9
