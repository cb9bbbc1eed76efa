"""The end of a ``sled bench paper`` run: losslessness, the headline ratios, withholding.

Pure: works on the results document (plain data, as ``results.json`` holds it) and the
run's :class:`~bench.sim.experiments.Recorder`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.sim import limit as lim
from bench.sim import regime
from bench.sim.experiments import Recorder
from bench.sim.results import WstgrSweep

MAX_KEPT = 50  # errors and violations kept in the results, at most
WITHHELD = (
    "wstgr",
    "speculative",
    "cost",
    "threshold",
    "profiles_live",
    "sled_single",
    "sled_live",
    "points",
    "regime",
    "server_bound",
)
"""Throughput results dropped from a run that was not lossless."""


def summarise(results: dict[str, Any], rec: Recorder) -> None:
    """Add errors, violations, ``lossless``, the points and the headline to ``results``.

    Lossless covers our system only (HF's own check is reported apart); when it fails,
    every throughput figure is withheld and the headline is all None.
    """
    results["errors"] = rec.errors[:MAX_KEPT]
    live = results.get("sled_live")
    if live and not live["lossless"]:
        rec.violations.append("live edge node output differs from the target's greedy")
    results["violations"] = rec.violations[:MAX_KEPT]
    results["lossless"] = rec.lossless
    results["points"] = rec.points
    single = results.get("sled_single")
    if single and single["mean_rate"] > 0:
        single["ms_per_token"] = 1e3 / single["mean_rate"]
    head = headline(results)
    if not rec.lossless:
        head = dict.fromkeys(head)
        for key in WITHHELD:
            results.pop(key, None)
    results.update(head)


def _at(points: Any, devices: int) -> float | None:
    return next((q.wstgr for q in points if q.devices == devices), None)


def headline(results: dict[str, Any]) -> dict[str, float | None]:
    """WSTGR ratio at 16 devices, capacities and their ratio, latency ratio vs HF."""
    head: dict[str, float | None] = {
        "wstgr_ratio_16": None,
        "capacity_sled": None,
        "capacity_centralized": None,
        "capacity_ratio": None,
        "hf_assisted_latency_ratio": None,
        "wstgr_ratio_16_server_bound": None,
        "server_bound_ratio_16": None,
        "server_bound_limit_16": None,
        "server_bound_alpha": None,
    }
    if results.get("wstgr"):
        wc = WstgrSweep.from_dict(results["wstgr"])
        sled, central = _at(wc.points["sled"], 16), _at(wc.points["centralized"], 16)
        best = _best_instant(results["wstgr"])
        instant = None if best is None else float(best["wstgr"])
        if sled is not None and central:
            head["wstgr_ratio_16"] = sled / central
        if instant is not None and central:
            head["wstgr_ratio_16_server_bound"] = instant / central
            head["server_bound_ratio_16"] = instant / central
        head.update(_limit(results))
        cs = wc.capacity["sled"].interpolated
        cc = wc.capacity["centralized"].interpolated
        head["capacity_sled"] = cs
        head["capacity_centralized"] = cc
        head["capacity_ratio"] = cs / cc if cc else None
    head.update(regime.headline(results.get("regime")))
    live, hf = results.get("sled_live"), results.get("hf")
    if live and hf:
        head["hf_assisted_latency_ratio"] = live["ms_per_token"] / hf["assisted"]["ms_per_token"]
    return head


def _best_instant(wstgr: Mapping[str, Any]) -> dict[str, Any] | None:
    """The server-bound point at 16 devices with the highest WSTGR over the ks tried."""
    points = [q for q in wstgr["points"].get("sled_instant", ()) if q["devices"] == 16]
    return max(points, key=lambda q: q["wstgr"], default=None)


def _limit(results: dict[str, Any]) -> dict[str, float | None]:
    """The server-bound limit at 16 devices: the best over k of E / (t_verify / t_decode),
    with the alpha measured in the best server-bound point (:mod:`bench.sim.limit`)."""
    costs = results.get("server_bound")
    point = _best_instant(results["wstgr"])
    if not costs or point is None or point["mean_accepted"] <= 0:
        return {}
    k = int(point.get("max_draft", costs["k"]))
    alpha = lim.alpha_from_mean(point["mean_accepted"], k)
    ratios = {int(kk): r for kk, r in costs["ratio"].items()}
    costs["k"] = k  # the k of the best point
    costs["limit_k"] = lim.best_draft_length(alpha, ratios)
    costs["alpha_measured"] = alpha
    costs["expected_tokens"] = lim.expected_tokens(alpha, costs["limit_k"])  # the limit's
    best = lim.limit(alpha, costs["limit_k"], ratios[costs["limit_k"]])
    return {"server_bound_limit_16": best, "server_bound_alpha": alpha}
