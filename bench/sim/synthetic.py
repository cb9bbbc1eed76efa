"""Synthetic drafts with per-token difficulty and the drafter's statistics. Pure.

The paper regime's target has random weights, so no real drafter agrees with it; its
drafts come from a *synthetic acceptance model* (an extension of the oracle drafter of
:func:`bench.sim.trace.oracle_trace`):

* every draft slot (committed count ``i``, offset ``j``) gets a latent acceptance
  probability ``q ~ Beta(alpha * c, (1 - alpha) * c)`` (mean ``alpha``, the same
  per-token acceptance as ``--alpha``; ``c`` = ``concentration`` sets how much slots
  differ: c -> inf is the oracle drafter's constant ``alpha``);
* the drafted token is the target's greedy token with probability ``q``, else another;
* the drafter reports what a calibrated drafter would: ``confidence`` = ``q`` plus
  Gaussian noise (sd ``noise``), clipped to [0.01, 0.99]; ``entropy`` (nats) and the
  top-2 ``margin`` of a distribution with that top probability and the remaining mass
  over ``m`` alternatives, the runner-up holding a random share of it.

So confidence, entropy and margin carry real but imperfect information about
acceptance, as a real drafter's do (the demo drafters' greedy confidence predicts
acceptance with a similar spread, see ``acceptance_offline``), and the speculation
controller (:mod:`edge_node.controller`) can learn from them while a fixed threshold
cannot adapt.
"""

from __future__ import annotations

import math
import random

from bench.sim.trace import PromptTrace, oracle_token

CONCENTRATION = 4.0
NOISE = 0.08
ALTERNATIVES = 8


def _features(rng: random.Random, q: float, noise: float) -> tuple[float, float, float]:
    """(confidence, entropy nats, top-2 margin) a calibrated drafter reports for ``q``."""
    conf = min(0.99, max(0.01, q + rng.gauss(0.0, noise)))
    rest = 1.0 - conf
    second = rest * rng.uniform(0.3, 0.9)
    others = (rest - second) / (ALTERNATIVES - 1)
    probs = [conf, second] + [others] * (ALTERNATIVES - 1)
    entropy = -sum(p * math.log(p) for p in probs if p > 0)
    return conf, entropy, max(0.0, conf - second)


def synthetic_trace(
    prompt: list[int],
    reference: list[int],
    *,
    max_new_tokens: int,
    alpha: float,
    chain_len: int,
    vocab_size: int,
    seed: int,
    avoid: frozenset[int] = frozenset(),
    concentration: float = CONCENTRATION,
    noise: float = NOISE,
) -> PromptTrace:
    """A trace of the synthetic drafter (module docstring) over ``reference``."""
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha must lie in (0, 1)")
    if concentration <= 0:
        raise ValueError("concentration must be > 0")
    rng = random.Random(seed)
    a, b = alpha * concentration, (1.0 - alpha) * concentration
    chains, confs, ents, margins = [], [], [], []
    for i in range(len(reference)):
        chain, c_row, e_row, m_row = [], [], [], []
        for j in range(chain_len):
            true = reference[i + j] if i + j < len(reference) else None
            q = rng.betavariate(a, b)
            tok = oracle_token(rng, true, q, vocab_size, avoid)
            conf, ent, margin = _features(rng, q, noise)
            chain.append(tok)
            c_row.append(conf)
            e_row.append(ent)
            m_row.append(margin)
        chains.append(chain)
        confs.append(c_row)
        ents.append(e_row)
        margins.append(m_row)
    return PromptTrace(
        list(prompt),
        list(reference),
        chains,
        confs,
        max_new_tokens,
        sorted(avoid),
        entropies=ents,
        margins=margins,
    )
