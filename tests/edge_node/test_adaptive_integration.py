"""The adaptive speculation controller end to end: real Mosquitto, real ONNX drafter,
a real verifier with a tiny target; the output is the target's own greedy output."""

from __future__ import annotations

import uuid

import pytest

from edge_node.config import EdgeConfig
from edge_node.drafter import Drafter
from edge_node.service import EdgeNode
from runtime.mosquitto import Mosquitto
from runtime.transport import MqttConfig
from schemas import SamplingParams, Topics
from tests.edge_node.conftest import TinyDrafter
from tests.verifier_node.helpers import greedy_truth, running_verifier
from verifier_node.config import VerifierConfig
from verifier_node.node import make_mqtt_transport

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PROMPTS = ["In the beginning God created", "And the earth was", "Let there be light"]
MAX_NEW = 24


def _transport(config, online, offline):  # type: ignore[no-untyped-def]
    transport = make_mqtt_transport(config, online, offline)
    transport._config = transport._config.with_(connect_timeout_s=5, op_timeout_s=5)
    return transport


@pytest.mark.parametrize("async_drafting", [True, False])
async def test_adaptive_controller_is_token_exact(
    llama_int8: TinyDrafter,
    broker: Mosquitto,
    mqtt_config: MqttConfig,
    topics: Topics,
    async_drafting: bool,
) -> None:
    """An int8 drafter of the fp32 target: mostly right, sometimes not (quantization),
    and never confident (random tiny weights) — so only the probe and the predictor's
    learning make it draft more than one token a round."""
    target_dir = llama_int8.hf_dir
    drafter = Drafter(llama_int8.onnx_dir, threads=1)
    prompts = [drafter.encode(p) for p in PROMPTS]
    truth = greedy_truth(target_dir, prompts, MAX_NEW)
    vcfg = VerifierConfig(
        verifier_id=f"v-{uuid.uuid4().hex[:8]}",
        broker_url=broker.url,
        topic_prefix=topics.prefix,
        max_batch=4,
        max_wait_ms=2.0,
    )
    ecfg = EdgeConfig(
        device_id=f"pi-{uuid.uuid4().hex[:6]}",
        broker_url=broker.url,
        topic_prefix=topics.prefix,
        controller="adaptive",
        async_drafting=async_drafting,
        tpot_ms=80.0,
        status_wait_ms=200,
    )
    async with (
        running_verifier(vcfg, target_dir, _transport),
        EdgeNode(ecfg, drafter=drafter) as node,
    ):
        finals = [
            await node.generate_text(text, max_new_tokens=MAX_NEW, publish=False)
            for text in PROMPTS
        ]
    for final, want in zip(finals, truth, strict=True):
        assert final.finish_reason in ("length", "stop"), final.error
        assert final.tokens == want  # token for token: the target's greedy output
        assert final.unverified_tokens == 0
        assert final.drafted >= final.rounds - 1  # a probe each round (not the last)
    assert sum(f.drafted for f in finals) > sum(f.rounds for f in finals)  # learned: > probe
    assert node.controller is not None
    assert node.controller.predictor.updates >= sum(f.rounds for f in finals) - len(finals)
    assert node.controller.rtt_s is not None and node.controller.draft_s is not None


async def test_adaptive_controller_with_sampling(
    llama_int8: TinyDrafter, broker: Mosquitto, mqtt_config: MqttConfig, topics: Topics
) -> None:
    """Sampling drafts feed the controller their q's confidence, entropy and margin; the
    session runs to its budget with every token verified."""
    vcfg = VerifierConfig(
        verifier_id=f"v-{uuid.uuid4().hex[:8]}",
        broker_url=broker.url,
        topic_prefix=topics.prefix,
    )
    ecfg = EdgeConfig(
        device_id=f"pi-{uuid.uuid4().hex[:6]}",
        broker_url=broker.url,
        topic_prefix=topics.prefix,
        status_wait_ms=200,
    )
    assert ecfg.policy().controller == "adaptive"  # the default
    params = SamplingParams(temperature=0.8, top_k=50, seed=3)
    async with (
        running_verifier(vcfg, llama_int8.hf_dir, _transport),
        EdgeNode(ecfg, drafter=Drafter(llama_int8.onnx_dir)) as node,
    ):
        final = await node.generate_text(
            PROMPTS[0], max_new_tokens=MAX_NEW, params=params, publish=False
        )
    assert final.finish_reason in ("length", "stop"), final.error
    assert final.unverified_tokens == 0 and final.verified_tokens == len(final.tokens) > 0
    assert node.controller is not None and node.controller.predictor.updates > 0
