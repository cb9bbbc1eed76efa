"""The report's parts for the server-bound limit and the paper regime (g), with plots.

Works on the plain results document (``results.json``), so it renders any run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

LABELS = {
    "centralized": "centralized",
    "sled_paper": "SLED as in the paper (threshold, fifo)",
    "sled_full": "SLED + deadline scheduler + controller",
    "controller_only": "SLED + controller only",
    "scheduler_only": "SLED + scheduler only",
}


def _f(x: Any, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _rows(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
        *["| " + " | ".join(str(c) for c in row) + " |" for row in rows],
        "",
    ]


def server_bound_section(results: Mapping[str, Any]) -> list[str]:
    """The server-bound ratio against its limit E / (t_verify / t_decode)."""
    costs = results.get("server_bound")
    if not costs:
        return []
    k, lk = costs["k"], costs.get("limit_k", costs["k"])
    ratio = costs["ratio"].get(lk, costs["ratio"].get(str(lk)))
    rows = [
        [str(kk), _f(r), _f(costs["t_verify_ms"].get(kk, costs["t_verify_ms"].get(str(kk))), 1)]
        for kk, r in costs["ratio"].items()
    ]
    return [
        "## Server-bound limit",
        "",
        f"Devices drafting instantly, 16 devices, k = {k} (the best measured of k = "
        f"{', '.join(str(x) for x in costs.get('ks_tried', [k]))}: the k with the highest "
        f"limit for the nominal alpha and the next two longer), batching window 40 ms, "
        f"dtype {costs['dtype']} on {costs['device']}. The verifier engine's rounds "
        f"on the oracle target, B = {costs['batch']}, context {costs['context']}, "
        f"interleaved, median of {costs['repeats']}: decode step "
        f"{_f(costs['t_decode_ms'], 1)} ms; the limit takes the best k "
        f"(k = {costs.get('limit_k', k)}).",
        "",
        *_rows(["k", "t_verify / t_decode", "t_verify ms"], rows),
        f"Measured alpha {_f(results.get('server_bound_alpha'), 3)}, E (k = {lk}) = "
        f"{_f(costs.get('expected_tokens'))}, t_verify / t_decode = {_f(ratio)}: limit "
        f"{_f(results.get('server_bound_limit_16'))}; measured SLED / centralized "
        f"{_f(results.get('server_bound_ratio_16'))}.",
        "",
    ]


def regime_section(out: Path, results: Mapping[str, Any]) -> list[str]:
    """(g): goodput and capacity under the TPOT objective, five configurations."""
    regime, setup = results.get("regime"), results.get("regime_setup")
    if not regime or not setup:
        return []
    configs: dict[str, Any] = regime["configs"]
    rows = []
    for name, c in configs.items():
        best = max(c["points"], key=lambda q: q["goodput"], default=None)
        rows.append(
            [
                LABELS.get(name, name),
                _f(c["capacity"]) + ("+" if c["capacity_lower_bound"] else ""),
                _f(c["goodput"], 1),
                best["devices"] if best else "—",
                _f(best["tpot_p50_ms"], 0) if best else "—",
                _f(best["acceptance_rate"]) if best and name != "centralized" else "—",
            ]
        )
    plots = _plots(out, configs, setup["tpot_ms"])
    return [
        "## (g) Paper regime: goodput and capacity under a TPOT objective",
        "",
        f"Target: {setup['params'] / 1e6:.0f}M parameters (hidden {setup['hidden']}, "
        f"{setup['layers']} layers, planted, {results.get('dtype')}); objective "
        f"{setup['tpot_ms']:g} ms per token for every device; {setup['profile']} devices "
        f"({setup['draft_tokens_per_s']:g} draft tokens/s); synthetic drafts, alpha "
        f"{setup['alpha']:g}, max_draft {setup['max_draft']}, paper threshold "
        f"{setup['paper_threshold']:g}. Capacity: most devices with >= 90 % of sessions "
        "within the objective (+: every count measured passed).",
        "",
        *_rows(
            ["configuration", "capacity", "goodput tok/s", "at devices", "TPOT p50 ms", "accept"],
            rows,
        ),
        f"Estimator MAPE over the sled_full rounds: {_f(regime.get('estimator_mape'), 3)}.",
        "",
        *[f"![{p}]({p})" for p in plots],
        "",
    ]


def _plots(out: Path, configs: Mapping[str, Any], tpot_ms: float) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    names = []
    for key, ylabel, name in (
        ("goodput", f"goodput (tokens/s within {tpot_ms:g} ms/token)", "regime_goodput.png"),
        ("slo_attainment", "SLO attainment", "regime_attainment.png"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for cfg, c in configs.items():
            pts = sorted(c["points"], key=lambda q: q["devices"])
            ax.plot([q["devices"] for q in pts], [q[key] for q in pts], "o-", label=LABELS[cfg])
        if key == "slo_attainment":
            ax.axhline(0.9, color="grey", linestyle=":")
        ax.set_xlabel("devices")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name)
        plt.close(fig)
        names.append(name)
    return names
