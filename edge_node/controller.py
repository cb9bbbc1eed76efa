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
  costs ``T(k) = k * token_s + round_s`` seconds. One more draft raises the round's
  tokens per second ``A / T`` iff::

      P_{k+1} * T(k) > token_s * A(k)        # gain of one more token vs its cost

  The costs are measured. ``verify_token_s`` and ``verify_fixed_s`` are the verifier's
  own cost model when its verdicts carry it (``token_us``, ``row_us``: what one more
  token, and one more row with its share of the round's fixed cost, add to a round;
  the device alone cannot tell its tokens' cost from the other rows' in a batch). Else
  the verifier's time for this device's rounds is fitted as
  ``verify_fixed_s + verify_token_s * (drafts + 1)`` (:class:`VerifyCost`, from the
  verdicts' ``verify_us``). With ``c = (load - own) / (1 - load)`` (an M/M/1 queue's
  wait per unit of service at the busy fraction ``load``, the verdicts' hint, counting
  only the others' share: ``own`` = this device's verify time / round trip), what this
  device's work costs the others on a busy verifier::

      token_s = draft_s + verify_token_s * (1 + c)          # one more draft
      round_s = rtt_s - verify_token_s * drafts + c * (verify_fixed_s + verify_token_s)

  with ``rtt_s`` the round trip's EWMA. So a device drafts longer when the round trip
  is long or the verifier busy with fixed per-round costs (the paper's Fig. 5), shorter
  when the verifier is idle and near, or when each verified token is what costs. A
  draft ahead is kept with probability
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


def _clip(value: float, low: float, high: float) -> float:
    """``value`` in ``[low, high]``; a non-finite value (nan) counts as ``low``."""
    return min(high, max(low, value)) if math.isfinite(value) else low


def _vector(f: DraftFeatures) -> Vector:
    """``[1, logit(c), pos]`` (confidence-only) or ``[1, logit(c), pos, H, m]`` (full)."""
    c = _clip(f.confidence, CONFIDENCE_CLIP, 1.0 - CONFIDENCE_CLIP)
    head = [1.0, math.log(c / (1.0 - c)), min(max(f.position, 0), 16) / 8.0]
    if f.entropy is None or f.margin is None:
        return np.array(head)
    return np.array([*head, _clip(f.entropy, 0.0, 10.0) / 5.0, _clip(f.margin, 0.0, 1.0)])


class AcceptancePredictor:
    """P(draft accepted | the ones before it were), logistic regression trained online.

    Two weight vectors: the full model and the confidence-only one (features of
    :func:`_vector`). Both start at the prior ``p = confidence`` (weight 1 on
    ``logit(c)``, 0 elsewhere) and learn by SGD with per-coordinate step sizes
    (RMSProp: ``lr / sqrt(mean squared gradient)``), pulled gently towards the prior.
    """

    def __init__(self, *, lr: float = 0.1, decay: float = 0.99, l2: float = 1e-4) -> None:
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
            rms = np.sqrt(sq / (1 - self.decay ** (self.updates + 1)))  # bias-corrected
            # a new array, assigned at once: a reader in another thread sees old or new
            self.weights[n] = w - self.lr * grad / (rms + 1e-8)
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
    lr: float = 0.1  # predictor step size

    def __post_init__(self) -> None:
        if not self.prior_round_drafts > 0 or not self.waste_weight >= 0:
            raise ValueError("prior_round_drafts must be > 0 and waste_weight >= 0")
        if not 0 < self.alpha <= 1 or not self.lr > 0 or self.min_drafts < 0:
            raise ValueError("alpha must be in (0, 1], lr > 0 and min_drafts >= 0")


def _ewma(old: float | None, new: float, alpha: float) -> float:
    return new if old is None else (1 - alpha) * old + alpha * new


class VerifyCost:
    """The verifier's time for this device's rounds, ``fixed_s + token_s * tokens``
    (``tokens``: drafts + 1), fitted online from EWMA moments of (tokens, verify time).

    The slope is this device's marginal cost per verified token (other devices' rows in
    the same batch land in the intercept). It shrinks towards 0 while the device's
    round sizes hardly vary (``shrink``, tokens squared), so it starts as all fixed.
    """

    def __init__(self, alpha: float, shrink: float = 1.0) -> None:
        self.alpha, self.shrink = alpha, shrink
        self.samples = 0
        self.mean_tokens = self.mean_s = self._var = self._cov = 0.0

    def observe(self, tokens: int, verify_s: float) -> None:
        if self.samples == 0:
            self.mean_tokens, self.mean_s = float(tokens), verify_s
        else:
            a = self.alpha
            dn, ds = tokens - self.mean_tokens, verify_s - self.mean_s
            self.mean_tokens += a * dn
            self.mean_s += a * ds
            self._var = (1 - a) * (self._var + a * dn * dn)
            self._cov = (1 - a) * (self._cov + a * dn * ds)
        self.samples += 1

    @property
    def token_s(self) -> float:
        return max(0.0, self._cov / (self._var + self.shrink))

    @property
    def fixed_s(self) -> float:
        return max(0.0, self.mean_s - self.token_s * self.mean_tokens)


class SpeculationController:
    """The adaptive controller of one device (see the module docstring).

    The service feeds it drafting times (:meth:`observe_draft`); the sessions of the
    device feed it each verdict (:meth:`on_verdict`: the lesson, timings and load) and
    ask :meth:`round_stop` / :meth:`ahead_stop`. Drafting runs in a worker thread and
    verdicts on the event loop: updates assign new numbers (and new weight arrays), so a
    decision made meanwhile uses old or new estimates, never fails.
    """

    def __init__(self, config: ControllerConfig | None = None) -> None:
        self.config = config or ControllerConfig()
        self.predictor = AcceptancePredictor(lr=self.config.lr)
        self.draft_s: float | None = None  # EWMA of one draft token's drafting time
        self.rtt_s: float | None = None  # EWMA of the round trip
        self.verify = VerifyCost(self.config.alpha)  # the verifier's time for my rounds
        self.queue_s: float | None = None  # EWMA of the verifier's queue time
        self.load: float | None = None  # EWMA of the verifier's busy fraction (hint)
        self.server_token_s: float | None = None  # the verifier's cost model (hints):
        self.server_row_s: float | None = None  # one more token / row, EWMA

    # -- measurements ------------------------------------------------------------------
    def observe_draft(self, seconds_per_token: float) -> None:
        if seconds_per_token > 0 and math.isfinite(seconds_per_token):
            self.draft_s = _ewma(self.draft_s, seconds_per_token, self.config.alpha)

    def observe_round(
        self,
        rtt_s: float | None,
        *,
        tokens: int = 1,
        queue_us: int = 0,
        verify_us: int = 0,
        load: float = 0.0,
        token_us: int = 0,
        row_us: int = 0,
    ) -> None:
        """A verdict came for ``tokens`` (drafts + 1): its round trip (None: resent, not
        a sample) and the server's hints (``token_us``/``row_us`` 0: not sent)."""
        a = self.config.alpha
        if rtt_s is not None and rtt_s >= 0 and math.isfinite(rtt_s):
            self.rtt_s = _ewma(self.rtt_s, rtt_s, a)
        if verify_us > 0:
            self.verify.observe(tokens, verify_us / 1e6)
        if queue_us >= 0:
            self.queue_s = _ewma(self.queue_s, queue_us / 1e6, a)
        if math.isfinite(load):
            self.load = _ewma(self.load, min(1.0, max(0.0, load)), a)
        if token_us > 0 and row_us > 0:
            self.server_token_s = _ewma(self.server_token_s, token_us / 1e6, a)
            self.server_row_s = _ewma(self.server_row_s, row_us / 1e6, a)

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
        self.observe_round(
            rtt_s,
            tokens=num_sent + 1,
            queue_us=verdict.queue_us,
            verify_us=verdict.verify_us,
            load=verdict.load,
            token_us=verdict.token_us or 0,
            row_us=verdict.row_us or 0,
        )

    # -- costs -------------------------------------------------------------------------
    def costs_s(self) -> tuple[float, float]:
        """``(token_s, round_s)``: one more draft's cost, and a round's fixed cost."""
        ratio = self.config.prior_round_drafts
        draft_s, rtt_s = self.draft_s, self.rtt_s
        if draft_s is None and rtt_s is None:
            return 1.0, ratio
        if draft_s is None:
            assert rtt_s is not None
            draft_s = max(rtt_s, 1e-6) / ratio
        if rtt_s is None:
            rtt_s = ratio * draft_s
        v = self.verify
        load = min(self.load or 0.0, MAX_LOAD)
        own = min(1.0, v.mean_s / rtt_s) if v.samples and rtt_s > 0 else 0.0  # my busy share
        c = max(0.0, load - own) / (1.0 - load)  # what my work costs the others
        verify_token_s, verify_row_s = v.token_s, v.fixed_s  # from my own rounds, or
        if self.server_token_s is not None and self.server_row_s is not None:
            verify_token_s, verify_row_s = self.server_token_s, self.server_row_s  # its model
        token_s = draft_s + verify_token_s * (1.0 + c)
        own_s = verify_token_s * max(0.0, v.mean_tokens - 1.0)  # my drafts' share of the rtt
        return token_s, max(0.0, rtt_s - own_s) + c * (verify_row_s + verify_token_s)

    def p(self, f: DraftFeatures | None) -> float:
        """P(accepted | the drafts before it were); 1 for a token without features."""
        return 1.0 if f is None else self.predictor.predict(f)

    # -- decisions -----------------------------------------------------------------------
    def round_stop(
        self, drafts: Sequence[DraftFeatures | None], candidate: DraftFeatures
    ) -> StopReason | None:
        """Drafts of the round so far and the candidate: stop (PREDICTED) or None.

        Draft the candidate iff ``P_{k+1} * T(k) > token_s * A(k)`` (module docstring)
        or the round has fewer than ``min_drafts``.
        """
        if len(drafts) < self.config.min_drafts:
            return None
        token_s, round_s = self.costs_s()
        prob, tokens = 1.0, 1.0  # P_k, A(k)
        for f in drafts:
            prob *= self.p(f)
            tokens += prob
        gain = prob * self.p(candidate) * (len(drafts) * token_s + round_s)
        return None if gain > token_s * tokens else StopReason.PREDICTED

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

    def snapshot(self) -> dict[str, float | None]:
        """The measurements and costs, milliseconds (None: not measured yet), for logs."""
        token_s, round_s = self.costs_s()
        measured = self.draft_s is not None or self.rtt_s is not None

        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1e3, 3)

        return {
            "draft_ms": ms(self.draft_s),
            "rtt_ms": ms(self.rtt_s),
            "token_ms": ms(token_s if measured else None),
            "round_ms": ms(round_s if measured else None),
            "verify_token_ms": ms(self.verify.token_s),
            "verify_fixed_ms": ms(self.verify.fixed_s),
            "load": self.load,
            "updates": float(self.predictor.updates),
        }
