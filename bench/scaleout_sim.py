"""The assignment at scale, no models: 10,000 devices over 100 verifiers (seconds).

Uses the product's code: :func:`runtime.assignment.assign` for the spread and the moves,
and :class:`edge_node.assignment.Assignment` (one per device, as each edge node keeps
it) to check that a leaver's Last Will moves exactly its own devices and that a newcomer
takes new sessions only once it has settled.
"""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from edge_node.assignment import Assignment
from runtime.assignment import assign, moved_fraction
from schemas import VerifierStatus


def _spread(choice: dict[str, str | None], verifiers: list[str]) -> dict[str, Any]:
    counts = Counter(choice.values())
    per = [counts.get(v, 0) for v in verifiers]
    mean = statistics.fmean(per)
    return {
        "min": min(per),
        "max": max(per),
        "mean": round(mean, 1),
        "stdev": round(statistics.pstdev(per), 1),
        "max_over_mean": round(max(per) / mean, 3),
    }


def simulate(devices: int = 10_000, verifiers: int = 100, settle_s: float = 5.0) -> dict[str, Any]:
    """Spread, leave and join of the sticky assignment; the figures."""
    names = [f"dev-{i}" for i in range(devices)]
    vs = [f"verifier-{i}" for i in range(verifiers)]
    weights = dict.fromkeys(vs, 1.0)
    before = assign(names, weights)

    leaver = vs[0]
    after_leave = assign(names, {v: w for v, w in weights.items() if v != leaver})
    owned = {d for d in names if before[d] == leaver}
    moved_leave = {d for d in names if before[d] != after_leave[d]}

    newcomer = f"verifier-{verifiers}"
    after_join = assign(names, {**weights, newcomer: 1.0})
    moved_join = {d for d in names if before[d] != after_join[d]}

    # capacities 1 and 2 alternating: a verifier's share follows its weight
    mixed = {v: 1.0 + (i % 2) for i, v in enumerate(vs)}
    heavy = Counter(assign(names, mixed).values())
    light_mean = statistics.fmean(heavy.get(v, 0) for i, v in enumerate(vs) if i % 2 == 0)
    heavy_mean = statistics.fmean(heavy.get(v, 0) for i, v in enumerate(vs) if i % 2 == 1)

    return {
        "devices": devices,
        "verifiers": verifiers,
        "spread": _spread(before, vs),
        "leave": {
            "moved_fraction": round(moved_fraction(before, after_leave), 4),
            "only_the_leavers_devices_moved": moved_leave == owned,
            "leavers_devices": len(owned),
            "spread_after": _spread(after_leave, vs[1:]),
        },
        "join": {
            "moved_fraction": round(moved_fraction(before, after_join), 4),
            "bound_1_5_over_n": round(1.5 / (verifiers + 1), 4),
            "all_moves_to_the_newcomer": all(after_join[d] == newcomer for d in moved_join),
            "spread_after": _spread(after_join, [*vs, newcomer]),
        },
        "weights_1_and_2": {"mean_devices_w1": light_mean, "mean_devices_w2": heavy_mean},
        "edge_devices": _edge_devices(names[:2000], vs, leaver, newcomer, settle_s),
    }


def _edge_devices(
    names: list[str], vs: list[str], leaver: str, newcomer: str, settle_s: float
) -> dict[str, Any]:
    """Each device's own :class:`Assignment`, one live session each: Last Will, then a
    newcomer that is new (not yet settled) and later settled."""
    up = {v: VerifierStatus(verifier=v, online=True, capacity=1.0, started_at_ns=1) for v in vs}
    devices = {}
    for name in names:
        a = devices[name] = Assignment(name, settle_s=settle_s)
        for v, status in up.items():
            a.observe(v, status, 0.0, retained=True)
        a.pin("live", 0.0)
    pinned = {d: a.pinned("live") for d, a in devices.items()}
    nudged: set[str] = set()
    for d, a in devices.items():
        nudged.update(d for _ in a.observe(leaver, VerifierStatus(verifier=leaver, online=False),
                                           10.0, retained=False))  # fmt: skip
    moved = {d for d, a in devices.items() if a.pinned("live") != pinned[d]}
    after_will = {d: a.pinned("live") for d, a in devices.items()}
    joined = VerifierStatus(verifier=newcomer, online=True, capacity=1.0, started_at_ns=2)
    for a in devices.values():
        a.observe(newcomer, joined, 20.0, retained=False)
    early = sum(a.pin("new-early", 20.0 + settle_s / 2) == newcomer for a in devices.values())
    late = sum(a.pin("new-late", 20.0 + settle_s) == newcomer for a in devices.values())
    stayed = sum(a.pin("live", 30.0) == after_will[d] for d, a in devices.items())
    return {
        "devices": len(names),
        "moved_on_last_will": len(moved),
        "moved_were_the_leavers": moved == {d for d in names if pinned[d] == leaver},
        "nudged_are_the_moved": nudged == moved,
        "new_sessions_on_newcomer_before_settled": early,
        "new_sessions_on_newcomer_after_settled": late,
        "live_sessions_kept_on_join": stayed == len(names),
    }
