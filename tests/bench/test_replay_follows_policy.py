"""The paper benchmark replays traces through the product's drafting policy.

Each test swaps in a change to ``edge_node.policy`` and sees the benchmark follow it:
the offline acceptance table of experiment (e), the replayed device schedule, and the
simulated fleet over MQTT that experiments (a)-(d) measure. A copy of the policy in the
benchmark would not notice.
"""

from __future__ import annotations

import pytest

import edge_node.policy
from bench.sim.experiments import offline_acceptance
from bench.sim.fleet import FleetConfig
from bench.sim.replay import ReplayDevice
from bench.sim.trace import DraftPolicy, PromptTrace
from edge_node.policy import SledSession, StopReason
from runtime.transport import MqttConfig
from schemas import Topics
from tests.bench.test_fleet import _run

REF = [10, 11, 12, 13, 14, 15, 16, 17]


def _trace() -> PromptTrace:
    # a drafter that is always right: chains[i] = REF[i:] (padded), all confident
    chains = [(REF[i:] + [0] * 6)[:6] for i in range(len(REF))]
    return PromptTrace([1, 2], REF, chains, [[0.9] * 6 for _ in REF], max_new_tokens=8)


def _one_draft_per_round(
    confidence: float, num_drafted: int, *, threshold: float, max_draft: int
) -> StopReason | None:
    """A changed eq. 1: never more than one draft per round."""
    return StopReason.MAX_DRAFT if num_drafted >= 1 else None


def _table() -> dict[str, float]:
    (row,) = offline_acceptance({"d": [_trace()]}, thresholds=[0.0], max_drafts=[4])
    return row


def test_offline_acceptance_follows_the_stop_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    # 8 tokens: 4 drafts (4 accepted + target token), then 3 (budget; 2 accepted + target)
    assert _table()["mean_drafted"] == pytest.approx(3.5)
    monkeypatch.setattr(edge_node.policy, "draft_stop", _one_draft_per_round)
    row = _table()
    assert row["mean_drafted"] == 1.0
    assert row["tokens_per_round"] == pytest.approx(2.0)  # 1 accepted + 1 target token


def test_offline_acceptance_follows_the_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    """The policy's own threshold check decides, whatever the benchmark asked for."""
    original = SledSession.stop_reason

    def unsure(self: SledSession, confidence: float) -> StopReason | None:
        return original(self, confidence * 0.0)  # the drafter is never confident

    monkeypatch.setattr(SledSession, "stop_reason", unsure)
    row = offline_acceptance({"d": [_trace()]}, thresholds=[0.5], max_drafts=[4])[0]
    assert row["mean_drafted"] == 0.0 and row["tokens_per_round"] == 1.0


def test_replayed_schedule_follows_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    dev = ReplayDevice(_trace(), DraftPolicy(4), tokens_per_s=10.0, async_draft=False)
    assert dev.next_request(0.0).drafts == [10, 11, 12, 13]
    monkeypatch.setattr(edge_node.policy, "draft_stop", _one_draft_per_round)
    dev = ReplayDevice(_trace(), DraftPolicy(4), tokens_per_s=10.0, async_draft=False)
    req = dev.next_request(0.0)
    assert req.drafts == [10] and req.send_at == pytest.approx(0.1)
    assert req.message.draft == [10] and req.message.context == [1, 2]


@pytest.mark.integration
async def test_simulated_fleet_follows_the_policy(
    mqtt_config: MqttConfig, topics: Topics, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(edge_node.policy, "draft_stop", _one_draft_per_round)
    cfg = FleetConfig(
        mode="sled",
        devices=2,
        draft_tokens_per_s=200.0,
        policy=DraftPolicy(4),
        async_draft=False,
        warmup_s=0.2,
        measure_s=1.0,
        topics=topics,
    )
    res = await _run(mqtt_config, cfg)
    assert res.lossless, res.violations
    assert res.rounds > 0 and res.drafted == res.rounds  # one draft per request
