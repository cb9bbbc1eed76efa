"""How far to draft: the speculation controller of one device. Pure (numpy), no I/O.

Terms are those of :mod:`edge_node.policy`. A *round* is one verification request;
its *drafts* are the tokens sent; drafts *ahead* are drafted while the request is in
flight (asynchronous drafting): the first guesses the target token, the rest become the
next round's drafts if every sent draft is accepted and that guess is right. The
*candidate* is the drafter's next token, not drafted yet: the decision is whether to
draft it. Two controllers:

* ``threshold`` (paper eq. 1, :func:`draft_stop`): draft while the candidate's
  confidence is at least a hand-set threshold, up to ``max_draft``.
* ``adaptive`` (:class:`SpeculationController`): no threshold. An acceptance predictor
  (:class:`AcceptancePredictor`, logistic regression on the drafter's confidence,
  entropy, top-2 margin and the draft's position, trained online from this device's
  verdicts) gives ``p_j``, the probability that draft ``j`` is accepted given that the
  ones before it were. With ``P_j = p_1 ... p_j`` (all of the first ``j`` accepted), a
  round of ``k`` drafts commits ``A(k) = 1 + P_1 + ... + P_k`` tokens on average and
  takes ``T(k) = k * draft_s + round_s`` seconds. One more draft raises the round's
  tokens per second ``A / T`` iff::

      P_{k+1} * T(k) > draft_s * A(k)        # gain of one more token vs its cost

  ``round_s`` is the measured round trip (EWMA over verdicts) plus the round's cost to
  the other devices on a busy verifier: ``verify_s * load / (1 - load)`` (an M/M/1
  queue's wait per unit of service at busy fraction ``load``, the verdict's hint). So a
  device drafts longer when the round trip is long or the verifier busy, and shorter
  when the verifier is idle and near. A draft ahead is kept with probability
  ``P_sent * p_guess * ...``; it is drafted while keeping it is at least as likely as
  wasting it, weighted: ``P_kept >= waste / (1 + waste)`` (``waste_weight`` 1: 0.5).
  Every round drafts at least ``min_drafts`` (1): a probe, so the predictor keeps
  learning even where it predicts little (a drafter that is right but never confident
  would otherwise never be tried); it costs one drafting step a round at most.

Before anything is measured the predictor's prior is a calibrated drafter (``p =
confidence``) and ``round_s = prior_round_drafts * draft_s``, so it works from the
first round. Missing entropy or margin (old traces) use the confidence-only model,
trained alongside the full one on every verdict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from schemas import Verdict

Vector = npt.NDArray[np.float64]

CONFIDENCE_CLIP = 1e-3  # logit(confidence) with confidence clipped to [clip, 1 - clip]
MAX_LOAD = 0.95  # busy fraction used at most in the load cost (load / (1 - load) <= 19)


class StopReason(StrEnum):
    """Why a round of drafting ended."""

    THRESHOLD = "threshold"  # confidence fell below the threshold (eq. 1)
    PREDICTED = "predicted"  # the controller: one more draft does not pay
    MAX_DRAFT = "max_draft"  # max_draft tokens drafted
    EOS = "eos"  # the last draft is an end-of-sequence token
    BUDGET = "budget"  # drafts already fill the remaining max_new_tokens
    IN_FLIGHT = "in_flight"  # asynchronous drafting is off and a request is in flight
    DONE = "done"


CONTROLLERS = ("threshold", "adaptive")


def draft_stop(
    confidence: float, num_drafted: int, *, threshold: float, max_draft: int
) -> StopReason | None:
    """Paper eq. 1: stop when ``num_drafted == max_draft`` or ``confidence < threshold``."""
    if num_drafted >= max_draft:
        return StopReason.MAX_DRAFT
    if confidence < threshold:
        return StopReason.THRESHOLD
    return None


@dataclass(frozen=True, slots=True)
class DraftFeatures:
    """What the drafter knew about one token when it drafted it.

    ``confidence``: max probability (after the warpers); ``entropy``: of the same
    distribution, nats; ``margin``: top-1 minus top-2 probability; ``position``: the
    token's offset after the committed context when it was drafted (0: the next token).
    ``entropy``/``margin`` None: not recorded (the confidence-only model is used).
    """

    confidence: float
    entropy: float | None = None
    margin: float | None = None
    position: int = 0

    @property
    def full(self) -> bool:
        return self.entropy is not None and self.margin is not None


def _logit(confidence: float) -> float:
    c = min(1.0 - CONFIDENCE_CLIP, max(CONFIDENCE_CLIP, confidence))
    return math.log(c / (1.0 - c))


def _vector(f: DraftFeatures) -> Vector:
    """``[1, logit(c), pos]`` (confidence-only) or ``[1, logit(c), pos, H, m]`` (full)."""
    pos = min(f.position, 16) / 8.0
    if f.entropy is None or f.margin is None:
        return np.array([1.0, _logit(f.confidence), pos])
    entropy = min(max(f.entropy, 0.0), 10.0) / 5.0
    return np.array([1.0, _logit(f.confidence), pos, entropy, min(max(f.margin, 0.0), 1.0)])


class AcceptancePredictor:
    """P(draft accepted | the ones before it were), logistic regression trained online.

    Two weight vectors: the full model and the confidence-only one (features of
    :func:`_vector`). Both start at the prior ``p = confidence`` (weight 1 on
    ``logit(c)``, 0 elsewhere) and learn by SGD with per-coordinate step sizes
    (RMSProp: ``lr / sqrt(mean squared gradient)``), pulled gently towards the prior.
    """

    def __init__(self, *, lr: float = 0.05, decay: float = 0.99, l2: float = 1e-4) -> None:
        self.lr, self.decay, self.l2 = lr, decay, l2
        self.prior = {3: np.array([0.0, 1.0, 0.0]), 5: np.array([0.0, 1.0, 0.0, 0.0, 0.0])}
        self.weights = {n: w.copy() for n, w in self.prior.items()}
        self._sq = {n: np.zeros(n) for n in self.prior}
        self.updates = 0  # labelled drafts learned from

    def predict(self, f: DraftFeatures) -> float:
        x = _vector(f)
        z = float(self.weights[x.shape[0]] @ x)
        return 1.0 / (1.0 + math.exp(-min(max(z, -30.0), 30.0)))

    def update(self, f: DraftFeatures, accepted: bool) -> None:
        """One SGD step on one labelled draft (both models when it has all features)."""
        full = _vector(f)
        vectors = [full, full[:3]] if full.shape[0] == 5 else [full]
        y = 1.0 if accepted else 0.0
        for x in vectors:
            n = x.shape[0]
            w = self.weights[n]
            p = 1.0 / (1.0 + math.exp(-min(max(float(w @ x), -30.0), 30.0)))
            grad = (p - y) * x + self.l2 * (w - self.prior[n])  # d(log loss)/dw
            sq = self.decay * self._sq[n] + (1 - self.decay) * grad * grad
            self._sq[n] = sq
            # a new array, assigned at once: a reader in another thread sees old or new
            self.weights[n] = w - self.lr * grad / (np.sqrt(sq) + 1e-8)
        self.updates += 1

    def learn(self, drafts: Sequence[DraftFeatures | None], accepted: int) -> None:
        """A verdict's lesson: the first ``accepted`` of ``drafts`` were accepted, the
        rest (at most one: the first rejected) were not. None: features unknown."""
        for j, f in enumerate(drafts):
            if f is not None:
                self.update(f, j < accepted)


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    """Knobs of :class:`SpeculationController` (none is a threshold on confidence)."""

    prior_round_drafts: float = 4.0  # round trip / draft time until both are measured
    min_drafts: int = 1  # drafts a round always has (a probe: keeps the predictor learning)
    waste_weight: float = 1.0  # cost of a wasted draft ahead / gain of a kept one
    alpha: float = 0.2  # weight of a new sample in the time and load EWMAs
    lr: float = 0.05  # predictor step size

    def __post_init__(self) -> None:
        if not self.prior_round_drafts > 0 or not self.waste_weight >= 0:
            raise ValueError("prior_round_drafts must be > 0 and waste_weight >= 0")
        if not 0 < self.alpha <= 1 or not self.lr > 0 or self.min_drafts < 0:
            raise ValueError("alpha must be in (0, 1], lr > 0 and min_drafts >= 0")


def _ewma(old: float | None, new: float, alpha: float) -> float:
    return new if old is None else (1 - alpha) * old + alpha * new


class SpeculationController:
    """The adaptive controller of one device (see the module docstring).

    The service feeds it drafting times (:meth:`observe_draft`) and each verdict's
    timings and load (:meth:`observe_round`); the session feeds it the verdicts'
    lessons (:meth:`learn`) and asks :meth:`round_stop` / :meth:`ahead_stop`.
    """

    def __init__(self, config: ControllerConfig | None = None) -> None:
        self.config = config or ControllerConfig()
        self.predictor = AcceptancePredictor(lr=self.config.lr)
        self.draft_s: float | None = None  # EWMA of one draft token's drafting time
        self.rtt_s: float | None = None  # EWMA of the round trip
        self.verify_s: float | None = None  # EWMA of the verifier's verify time
        self.queue_s: float | None = None  # EWMA of the verifier's queue time
        self.load: float | None = None  # EWMA of the verifier's busy fraction (hint)

    # -- measurements ------------------------------------------------------------------
    def observe_draft(self, seconds_per_token: float) -> None:
        if seconds_per_token > 0 and math.isfinite(seconds_per_token):
            self.draft_s = _ewma(self.draft_s, seconds_per_token, self.config.alpha)

    def observe_round(
        self, rtt_s: float | None, *, queue_us: int = 0, verify_us: int = 0, load: float = 0.0
    ) -> None:
        """A verdict came: its round trip (None: resent, not a sample) and server hints."""
        a = self.config.alpha
        if rtt_s is not None and rtt_s >= 0 and math.isfinite(rtt_s):
            self.rtt_s = _ewma(self.rtt_s, rtt_s, a)
        if verify_us > 0:
            self.verify_s = _ewma(self.verify_s, verify_us / 1e6, a)
        if queue_us >= 0:
            self.queue_s = _ewma(self.queue_s, queue_us / 1e6, a)
        if math.isfinite(load):
            self.load = _ewma(self.load, min(1.0, max(0.0, load)), a)

    def learn(self, drafts: Sequence[DraftFeatures | None], accepted: int) -> None:
        """See :meth:`AcceptancePredictor.learn`."""
        self.predictor.learn(drafts, accepted)

    def on_verdict(
        self,
        verdict: Verdict,
        pending: Sequence[DraftFeatures | None],
        num_sent: int,
        guess: int | None,
        rtt_s: float | None,
    ) -> None:
        """A successful verdict for the first ``num_sent`` of ``pending`` (the features
        of the device's pending drafts; ``guess``: the first draft ahead, if any).

        Learns: the first ``accepted`` drafts were accepted; the next was rejected,
        unless the session ended (the budget may have cut it); when all sent drafts
        were accepted, the first draft ahead was right iff it is the target token.
        """
        a = verdict.accepted
        if a < num_sent:
            self.learn(pending[: a if verdict.done else a + 1], a)
        else:
            self.learn(pending[: num_sent + 1], a + (guess is not None and guess == verdict.token))
        load = verdict.load
        self.observe_round(rtt_s, queue_us=verdict.queue_us, verify_us=verdict.verify_us, load=load)

    # -- costs -------------------------------------------------------------------------
    def costs_s(self) -> tuple[float, float]:
        """``(draft_s, round_s)``: one draft token's time, and a round's fixed cost."""
        ratio = self.config.prior_round_drafts
        draft_s, rtt_s = self.draft_s, self.rtt_s
        if draft_s is None and rtt_s is None:
            return 1.0, ratio
        if draft_s is None:
            assert rtt_s is not None
            draft_s = max(rtt_s, 1e-6) / ratio
        if rtt_s is None:
            rtt_s = ratio * draft_s
        load = min(self.load or 0.0, MAX_LOAD)
        verify_s = self.verify_s or 0.0
        return draft_s, rtt_s + verify_s * load / (1.0 - load)

    def p(self, f: DraftFeatures | None) -> float:
        """P(accepted | the drafts before it were); 1 for a token without features."""
        return 1.0 if f is None else self.predictor.predict(f)

    # -- decisions -----------------------------------------------------------------------
    def round_stop(
        self, drafts: Sequence[DraftFeatures | None], candidate: DraftFeatures
    ) -> StopReason | None:
        """Drafts of the round so far and the candidate: stop (PREDICTED) or None.

        Draft the candidate iff ``P_{k+1} * T(k) > draft_s * A(k)`` (module docstring)
        or the round has fewer than ``min_drafts``.
        """
        if len(drafts) < self.config.min_drafts:
            return None
        draft_s, round_s = self.costs_s()
        prob, tokens = 1.0, 1.0  # P_k, A(k)
        for f in drafts:
            prob *= self.p(f)
            tokens += prob
        gain = prob * self.p(candidate) * (len(drafts) * draft_s + round_s)
        return None if gain > draft_s * tokens else StopReason.PREDICTED

    def ahead_stop(
        self,
        sent: Sequence[DraftFeatures | None],
        ahead: Sequence[DraftFeatures | None],
        candidate: DraftFeatures,
    ) -> StopReason | None:
        """While ``sent`` drafts are verified: draft the candidate ahead (None) or stop.

        Draft it iff ``P(kept) >= waste / (1 + waste)`` where ``P(kept)`` is the
        product of ``p`` over the sent drafts, the ones drafted ahead and the candidate.
        """
        kept = self.p(candidate)
        for f in (*sent, *ahead):
            kept *= self.p(f)
        w = self.config.waste_weight
        return None if kept * (1.0 + w) >= w else StopReason.PREDICTED

    def snapshot(self) -> dict[str, float]:
        """The measurements as plain numbers (for logs and benchmarks)."""
        draft_s, round_s = self.costs_s()
        return {
            "draft_ms": draft_s * 1e3,
            "round_ms": round_s * 1e3,
            "load": self.load or 0.0,
            "updates": float(self.predictor.updates),
        }
