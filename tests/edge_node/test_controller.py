"""The speculation controller: acceptance predictor, cost rule, and the session using it."""

from __future__ import annotations

import random

import pytest

from edge_node.controller import (
    AcceptancePredictor,
    ControllerConfig,
    DraftFeatures,
    SpeculationController,
    StopReason,
    VerifyCost,
)
from edge_node.policy import DraftToken, PolicyConfig, RttEstimator, SledSession
from schemas import SamplingParams, Verdict


def rounds_of(rule: object, n: int, seed: int = 0, *, entropy: bool = False) -> list:
    """``n`` verdicts' lessons: drafts with random features, accepted while ``rule`` holds."""
    rng = random.Random(seed)
    lessons = []
    for _ in range(n):
        drafts: list[DraftFeatures | None] = []
        accepted = None
        for j in range(8):
            f = DraftFeatures(
                rng.random(),
                rng.uniform(0.0, 3.0) if entropy else None,
                rng.random() if entropy else None,
                j,
            )
            drafts.append(f)
            if not rule(f):  # type: ignore[operator]
                accepted = j
                break
        lessons.append((drafts, len(drafts) if accepted is None else accepted))
    return lessons


def test_prior_is_a_calibrated_drafter() -> None:
    p = AcceptancePredictor()
    assert p.predict(DraftFeatures(0.3)) == pytest.approx(0.3)
    assert p.predict(DraftFeatures(0.9, entropy=0.5, margin=0.8, position=3)) == pytest.approx(0.9)


def test_predictor_learns_accept_iff_confidence_above_0_6() -> None:
    p = AcceptancePredictor()
    for drafts, accepted in rounds_of(lambda f: f.confidence > 0.6, 300):
        p.learn(drafts, accepted)
    # the prior said 0.55 and 0.65; the rule separates them
    assert p.predict(DraftFeatures(0.65)) > 0.8
    assert p.predict(DraftFeatures(0.55)) < 0.4
    assert p.predict(DraftFeatures(0.8)) > 0.95
    assert p.predict(DraftFeatures(0.3)) < 0.05


def test_predictor_learns_a_low_confidence_drafter_is_often_right() -> None:
    # the demo drafter: confidences are low, yet drafts above 0.2 are accepted
    p = AcceptancePredictor()
    for drafts, accepted in rounds_of(lambda f: f.confidence > 0.2, 100):
        p.learn(drafts, accepted)
    assert p.predict(DraftFeatures(0.3)) > 0.6  # the prior said 0.3
    assert p.predict(DraftFeatures(0.1)) < 0.2


def test_predictor_learns_from_entropy_and_keeps_a_confidence_only_model() -> None:
    # acceptance depends on entropy only (confidence is noise): the full model learns it
    p = AcceptancePredictor()
    for drafts, accepted in rounds_of(lambda f: f.entropy < 1.0, 1000, entropy=True):
        p.learn(drafts, accepted)
    low = p.predict(DraftFeatures(0.5, entropy=0.3, margin=0.5))
    high = p.predict(DraftFeatures(0.5, entropy=2.5, margin=0.5))
    assert low > 0.85 and high < 0.05
    # without entropy (an old trace) the confidence-only model answers: no separation
    assert 0.1 < p.predict(DraftFeatures(0.5)) < 0.9


def test_unknown_features_do_not_teach() -> None:
    p = AcceptancePredictor()
    p.learn([None, None], 1)
    assert p.updates == 0


def ctl(*, draft_ms: float = 10.0, rtt_ms: float = 40.0, **hints: float) -> SpeculationController:
    c = SpeculationController(ControllerConfig(min_drafts=0))  # the cost rule alone
    c.observe_draft(draft_ms / 1000)
    c.observe_round(rtt_ms / 1000, **hints)  # type: ignore[arg-type]
    return c


def round_length(c: SpeculationController, confidence: float, limit: int = 64) -> int:
    """Drafts of one round when every candidate has ``confidence``."""
    drafts: list[DraftFeatures | None] = []
    while len(drafts) < limit:
        cand = DraftFeatures(confidence, position=len(drafts))
        if c.round_stop(drafts, cand) is not None:
            break
        drafts.append(cand)
    return len(drafts)


@pytest.mark.parametrize(
    ("confidence", "drafts"),
    [
        # round trip 4 draft tokens: A/T is best at k = 0 for p = 0.2, ... (worked out
        # by hand from P_{k+1} T(k) > d A(k))
        (0.2, 0),  # 0.2 * 4 = 0.8 < 1
        (0.5, 1),  # 0.5 * 4 = 2 > 1; then 0.25 * 5 = 1.25 < 1.5
        (0.8, 3),  # 0.8*4 > 1, .64*5 > 1.8, .512*6 > 2.44, then .41*7 = 2.87 < 2.95
    ],
)
def test_round_length_from_the_cost_rule(confidence: float, drafts: int) -> None:
    assert round_length(ctl(draft_ms=10.0, rtt_ms=40.0), confidence) == drafts


def test_stops_before_a_likely_rejection() -> None:
    c = ctl(draft_ms=10.0, rtt_ms=100.0)
    sure = [DraftFeatures(0.95, position=j) for j in range(3)]
    assert c.round_stop(sure, DraftFeatures(0.9, position=3)) is None
    assert c.round_stop(sure, DraftFeatures(0.05, position=3)) is StopReason.PREDICTED


def test_longer_drafts_when_the_round_trip_is_long() -> None:
    near = round_length(ctl(draft_ms=10.0, rtt_ms=20.0), 0.8)
    far = round_length(ctl(draft_ms=10.0, rtt_ms=400.0), 0.8)
    assert near < far
    assert (near, far) == (2, 10)


def test_longer_drafts_under_high_load() -> None:
    # same round trip; the verifier says it is busy: a round costs the others its
    # verify time x load / (1 - load)
    idle = ctl(draft_ms=10.0, rtt_ms=100.0, verify_us=20_000, load=0.0)
    busy = ctl(draft_ms=10.0, rtt_ms=100.0, verify_us=20_000, load=0.9)
    # the others' share of the busy time: 0.9 - 0.2 (mine: 20 ms of a 100 ms round trip)
    assert busy.costs_s()[1] == pytest.approx(0.100 + 0.020 * (0.9 - 0.2) / 0.1)
    assert (round_length(idle, 0.8), round_length(busy, 0.8)) == (6, 8)


def test_a_device_alone_does_not_charge_itself_for_the_load() -> None:
    # the verifier is busy only with this device's rounds: no cost for the others
    alone = ctl(draft_ms=10.0, rtt_ms=40.0, verify_us=30_000, load=0.75)
    assert alone.costs_s()[1] == pytest.approx(0.040)


def test_verify_cost_learns_its_per_token_slope() -> None:
    v = VerifyCost(alpha=0.1)
    v.observe(5, 0.020)
    assert (v.token_s, v.fixed_s) == (0.0, 0.020)  # one size seen: all fixed
    for i in range(400):
        n = 2 + i % 8  # rounds of 1..8 drafts
        v.observe(n, 0.010 + 0.002 * n)
    # slope 2 ms a token, shrunk by var / (var + 1) with var ~ 5.25 tokens^2
    assert 0.0015 < v.token_s < 0.0020
    assert 0.010 < v.fixed_s < 0.013


def test_shorter_drafts_when_each_verified_token_costs() -> None:
    fixed = ctl(draft_ms=1.0, rtt_ms=40.0)
    per_token = ctl(draft_ms=1.0, rtt_ms=40.0)
    for i in range(400):
        n = 2 + i % 8
        per_token.observe_round(None, tokens=n, verify_us=2000 + 3000 * n)  # 3 ms a token
    assert round_length(per_token, 0.8) < round_length(fixed, 0.8)
    # and a busy verifier makes each token dearer still: shorter again
    busy = ctl(draft_ms=1.0, rtt_ms=40.0)
    busy.verify, busy.load = per_token.verify, 0.8
    assert round_length(busy, 0.8) < round_length(per_token, 0.8)


def test_the_verifiers_cost_model_replaces_the_devices_own_fit() -> None:
    # a batch's time hides what this device's tokens cost (its own fit says "all fixed");
    # the verdicts' token_us / row_us say 4 ms a token, 20 ms a row
    own = ctl(draft_ms=10.0, rtt_ms=100.0, verify_us=60_000, load=0.9)
    told = ctl(
        draft_ms=10.0, rtt_ms=100.0, verify_us=60_000, load=0.9, token_us=4000, row_us=20_000
    )
    c = (0.9 - 0.6) / 0.1  # the others' share of the load, per unit of service
    assert told.costs_s() == pytest.approx((0.010 + 0.004 * (1 + c), 0.100 + c * 0.024))
    assert round_length(told, 0.8) < round_length(own, 0.8)
    half = ctl(draft_ms=10.0, rtt_ms=100.0, token_us=4000)  # both or neither: unused
    assert half.server_token_s is None


def test_works_before_anything_is_measured() -> None:
    c = SpeculationController()  # round trip = 4 draft tokens until measured
    assert round_length(c, 0.8) == 3
    assert round_length(c, 0.2) == 1  # not worth it, but one probe a round


def test_probe_teaches_a_right_but_unsure_drafter() -> None:
    """Confidence 0.01, always accepted: the probe's verdicts teach the predictor, and
    rounds grow (the prior alone would never draft, so never learn)."""
    c = SpeculationController()
    c.observe_draft(0.002)
    c.observe_round(0.040)
    unsure = DraftFeatures(0.01, 4.0, 0.001)
    lengths = []
    for _ in range(30):
        n = round_length(c, 0.01)
        lengths.append(n)
        c.learn([unsure] * n, n)
    assert lengths[0] == 1 and lengths[-1] > 4


def test_ahead_drafts_while_keeping_is_likelier_than_waste() -> None:
    c = SpeculationController()
    sent = [DraftFeatures(0.9), DraftFeatures(0.9)]  # P(all sent accepted) = 0.81
    assert c.ahead_stop(sent, [], DraftFeatures(0.9)) is None  # 0.729 kept
    assert c.ahead_stop(sent, [DraftFeatures(0.9)], DraftFeatures(0.9)) is None  # 0.656
    ahead = [DraftFeatures(0.9)] * 4
    assert c.ahead_stop(sent, ahead[:3], DraftFeatures(0.9)) is None  # 0.9**6 = 0.53
    assert c.ahead_stop(sent, ahead, DraftFeatures(0.9)) is StopReason.PREDICTED  # 0.48
    assert c.ahead_stop([DraftFeatures(0.4)], [], DraftFeatures(0.9)) is StopReason.PREDICTED


def test_ahead_waste_weight() -> None:
    strict = SpeculationController(ControllerConfig(waste_weight=3.0))  # keep >= 0.75
    assert strict.ahead_stop([DraftFeatures(0.8)], [], DraftFeatures(0.9)) is StopReason.PREDICTED
    assert strict.ahead_stop([DraftFeatures(0.9)], [], DraftFeatures(0.9)) is None


def test_load_and_times_ignore_garbage() -> None:
    c = SpeculationController()
    c.observe_draft(-1.0)
    c.observe_draft(float("nan"))
    c.observe_round(None, load=float("nan"))
    c.observe_round(None, load=7.0)
    assert c.draft_s is None and c.rtt_s is None and c.load == 1.0  # clipped
    assert c.costs_s() == (1.0, 4.0)  # verify time unknown: no load cost


# -- in the session ----------------------------------------------------------------------


def session(**cfg: object) -> SledSession:
    config = PolicyConfig(**{"controller": "adaptive", "max_draft": 8, **cfg})  # type: ignore[arg-type]
    return SledSession(
        session="s",
        prompt=[1, 2, 3],
        max_new_tokens=100,
        params=SamplingParams(),
        eos_ids=frozenset({0}),
        config=config,
        rtt=RttEstimator(config),
        tpot_ms=50.0,
    )


def draft_round(s: SledSession, confidences: list[float]) -> int:
    n = 0
    for j, c in enumerate(confidences):
        if not s.should_draft(c, entropy=0.5, margin=c / 2):
            break
        s.add_draft(DraftToken(100 + len(s.pending) + j))
        n += 1
    return n


def test_threshold_sessions_have_no_controller() -> None:
    assert session(controller="threshold").controller is None
    with pytest.raises(ValueError, match="controller"):
        PolicyConfig(controller="magic")


def test_session_records_features_and_sends_tpot() -> None:
    s = session()
    assert draft_round(s, [0.9, 0.9, 0.01, 0.9]) == 2  # stops before the unlikely third
    assert s.pending[1].features == DraftFeatures(0.9, 0.5, 0.45, 1)
    req = s.build_request(0.0)
    assert req.tpot_ms == 50.0 and req.draft == [100, 102]
    assert s.build_request(0.0).tpot_ms == 50.0  # a resend with context too


def test_session_learns_from_its_verdicts() -> None:
    """Drafts with confidence 0.2 are always accepted, 0.05 never: the device learns to
    draft the first and not the second (the prior, p = confidence, drafts neither)."""
    s = session(async_drafting=False)
    assert s.controller is not None
    probe = DraftFeatures(0.2, 0.5, 0.1, 0)
    assert s.controller.round_stop([probe], DraftFeatures(0.2, 0.5, 0.1, 1)) is not None
    for i in range(60):
        s.pending = [DraftToken(7, features=DraftFeatures(0.2, 0.5, 0.1, j)) for j in range(3)]
        s.pending.append(DraftToken(8, features=DraftFeatures(0.05, 0.5, 0.02, 3)))
        s.build_request(float(i))
        start = len(s.committed_ids)
        v = Verdict(session="s", seq=s.seq, accepted=3, token=9, committed=start + 4)
        s.on_verdict(v, float(i) + 0.04)
        s.committed_ids = s.committed_ids[:3]  # keep the budget
    assert s.controller.predictor.updates == 240
    assert s.controller.p(DraftFeatures(0.2, 0.5, 0.1, 1)) > 0.85
    assert s.controller.p(DraftFeatures(0.05, 0.5, 0.02, 3)) < 0.2
    assert s.outstanding is None and not s.pending  # a fresh round
    assert draft_round(s, [0.2, 0.2, 0.2, 0.05, 0.2]) == 3


def test_verdict_teaches_the_first_draft_ahead() -> None:
    c = SpeculationController()
    f = DraftFeatures(0.5)
    v = Verdict(session="s", seq=0, accepted=2, token=42, committed=10)
    c.on_verdict(v, [f, f, f, f], 2, 42, 0.05)  # all sent accepted, the guess was right
    assert c.predictor.updates == 3 and c.rtt_s == 0.05
    v = Verdict(session="s", seq=1, accepted=1, token=42, committed=10, done=True)
    c.on_verdict(v, [f, f, f], 3, None, None)  # the budget ended it: no rejection learned
    assert c.predictor.updates == 4


def test_snapshot_says_what_is_not_measured_yet() -> None:
    c = SpeculationController()
    assert c.snapshot()["draft_ms"] is None and c.snapshot()["round_ms"] is None
    c.observe_draft(0.002)
    c.observe_round(0.030, tokens=3, verify_us=12_000, load=0.5)
    snap = c.snapshot()
    assert (snap["draft_ms"], snap["rtt_ms"], snap["load"]) == (2.0, 30.0, 0.5)
    # load 0.5, mine 12/30 = 0.4: c = 0.1 / 0.5 = 0.2; all of the verify time is fixed
    assert snap["round_ms"] == pytest.approx(30.0 + 12.0 * 0.2)
