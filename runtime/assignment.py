"""Which verifier serves a device: weighted rendezvous hashing (pure, no I/O).

Every device ranks the online verifiers by a score of the pair (device, verifier) and
picks the highest. The score is the weighted rendezvous (highest random weight) score of
Schindelhauer and Schomaker, ``-weight / ln(u)`` with ``u`` in (0, 1) a hash of the pair:

* **balance**: a verifier of weight ``w`` wins a fraction ``w / sum(weights)`` of devices;
* **minimal moves**: when a verifier joins, only the devices it now wins move (about
  ``w_new / sum`` of them, 1/N for equal weights); when one leaves, only its own devices
  move, each to its runner-up; every other device keeps its verifier;
* **no coordination**: each device computes its choice from the verifiers' retained
  statuses alone; verifiers just read their own draft topic.

The hash is BLAKE2b (stable across processes and machines, unlike ``hash()``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping

_SCALE = 2.0**64


def unit_hash(device: str, verifier: str) -> float:
    """A uniform number in (0, 1) that depends only on the pair."""
    digest = hashlib.blake2b(f"{device}\x00{verifier}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / _SCALE


def score(device: str, verifier: str, weight: float) -> float:
    """The pair's weighted rendezvous score; higher wins. ``weight`` > 0."""
    if not weight > 0:
        raise ValueError(f"weight must be > 0, got {weight}")
    return -weight / math.log(unit_hash(device, verifier))


def choose(device: str, weights: Mapping[str, float]) -> str | None:
    """The verifier with the highest score for ``device`` among ``weights`` (verifier ->
    weight; weights <= 0 are skipped); None when there is none. Ties go to the smaller id."""
    best: tuple[float, str] | None = None
    for verifier, weight in weights.items():
        if not weight > 0:
            continue
        s = score(device, verifier, weight)
        if best is None or s > best[0] or (s == best[0] and verifier < best[1]):
            best = (s, verifier)
    return None if best is None else best[1]


def assign(devices: Iterable[str], weights: Mapping[str, float]) -> dict[str, str | None]:
    """Every device's choice (for simulations and tests)."""
    return {d: choose(d, weights) for d in devices}


def moved_fraction(before: Mapping[str, str | None], after: Mapping[str, str | None]) -> float:
    """The fraction of the devices of ``before`` whose verifier differs in ``after``."""
    if not before:
        return 0.0
    return sum(before[d] != after.get(d) for d in before) / len(before)
