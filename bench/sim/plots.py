"""The PNG plots of ``sled bench paper`` (matplotlib, Agg backend), from typed records.

Each function draws one figure into ``out`` and returns the file name for the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.sim.results import AcceptanceRow, CostRow, SweepRow, Timing, WstgrSweep

SERIES = {"sled": "SLED", "sled_instant": "SLED, instant drafting", "centralized": "centralized"}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 11, "figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3})
    return plt


def _save(plt: Any, fig: Any, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name)
    plt.close(fig)
    return name


def plot_wstgr(out: Path, wc: WstgrSweep, title: str) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode, style in (("sled", "o-"), ("sled_instant", "^:"), ("centralized", "s--")):
        pts = wc.points.get(mode, ())
        if not pts:
            continue
        ax.plot([q.devices for q in pts], [q.wstgr for q in pts], style, label=SERIES[mode])
    ax.set_xlabel("devices")
    ax.set_ylabel("WSTGR (verified tokens/s, whole system)")
    ax.set_title(title)
    ax.legend()
    return _save(plt, fig, out, "wstgr.png")


def plot_capacity(out: Path, wc: WstgrSweep, target: float) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode, style in (("sled", "o-"), ("centralized", "s--")):
        cap = wc.capacity[mode]
        xs = sorted(cap.table)
        label = f"{SERIES[mode]} (capacity {cap.interpolated:.1f})"
        ax.plot(xs, [cap.table[n] for n in xs], style, label=label)
    ax.axhline(target, color="red", lw=1, ls=":", label=f"rate target {target:g} tokens/s")
    ax.set_xlabel("devices")
    ax.set_ylabel("slowest device's rate (tokens/s)")
    ax.set_title("Capacity: devices served at the response-rate target")
    ax.legend()
    return _save(plt, fig, out, "capacity.png")


def plot_speculative(
    out: Path, rows: Sequence[SweepRow], key: str, xlabel: str, name: str, title: str
) -> str:
    """Per-device rate and capacity against ``key`` (``max_draft`` or ``threshold``)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [getattr(r, key) for r in rows]
    label = "per-device rate (lightest load)"
    ax.plot(xs, [r.device_rate for r in rows], "o-", color="tab:blue", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("per-device rate (tokens/s)", color="tab:blue")
    ax2 = ax.twinx()
    label = "capacity (devices; hollow: lower bound)"
    ax2.plot(xs, [r.capacity for r in rows], "s--", color="tab:orange", label=label)
    bounds = [r for r in rows if r.capacity_lower_bound]
    ax2.plot(
        [getattr(r, key) for r in bounds],
        [r.capacity for r in bounds],
        "s",
        color="white",
        markeredgecolor="tab:orange",
        markersize=9,
    )
    ax2.set_ylabel("capacity (devices at the rate target)", color="tab:orange")
    ax2.grid(False)
    lines = [ln for ln in ax.get_lines() + ax2.get_lines() if not ln.get_label().startswith("_")]
    ax.legend(lines, [ln.get_label() for ln in lines], loc="best")
    ax.set_title(title)
    return _save(plt, fig, out, name)


def plot_cost(out: Path, cost: Sequence[CostRow]) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode, marker in (("all-edge", "^"), ("centralized", "s"), ("sled", "o")):
        rows = [r for r in cost if r.mode == mode]
        label = mode if mode != "sled" else "SLED"
        xy = ([r.usd_per_1k for r in rows], [r.tokens_per_s for r in rows])
        ax.scatter(*xy, marker=marker, s=45, label=label)
        for r in rows:
            at = (r.usd_per_1k, r.tokens_per_s)
            ax.annotate(f"{r.devices}", at, textcoords="offset points", xytext=(4, 3), fontsize=8)
    fronts = (
        ([r for r in cost if r.pareto], "black", 14, "Pareto front (all)"),
        ([r for r in cost if r.pareto_target_quality], "red", 19, "Pareto front (target quality)"),
    )
    for on_front, color, size, name in fronts:
        front = sorted(on_front, key=lambda r: r.usd_per_1k)
        ax.plot(
            [r.usd_per_1k for r in front],
            [r.tokens_per_s for r in front],
            ls=":",
            lw=1,
            color=color,
            marker="o",
            markersize=size,
            markerfacecolor="none",
            label=name,
        )
    ax.set_xscale("log")
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("cost ($ per 1K tokens, eq. 2, log scale)")
    ax.set_ylabel("throughput (tokens/s, whole system)")
    ax.set_title("Cost vs throughput (labels: devices)")
    ax.legend()
    return _save(plt, fig, out, "cost.png")


def plot_acceptance(out: Path, rows: Sequence[AcceptanceRow]) -> str:
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    for drafter in sorted({r.drafter for r in rows}):
        for k in sorted({r.max_draft for r in rows}):
            sel = [r for r in rows if r.drafter == drafter and r.max_draft == k]
            xs = [r.threshold for r in sel]
            ax1.plot(xs, [r.acceptance_rate for r in sel], "o-", label=f"{drafter}, k={k}")
            ax2.plot(xs, [r.mean_accepted for r in sel], "o-", label=f"{drafter}, k={k}")
    ax1.set_xlabel("confidence threshold")
    ax1.set_ylabel("acceptance rate (accepted / drafted)")
    ax2.set_xlabel("confidence threshold")
    ax2.set_ylabel("mean accepted drafts per round")
    ax1.legend(fontsize=9)
    fig.suptitle("Greedy acceptance of the demo drafters (max_draft k)")
    return _save(plt, fig, out, "acceptance.png")


def plot_latency(out: Path, hf: dict[str, Timing], sled_ms: float) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    names = ["target only\n(HF, greedy)", "HF assisted\n(one process)", "SLED\n(over MQTT)"]
    vals = [hf["target_only"].ms_per_token, hf["assisted"].ms_per_token, sled_ms]
    bars = ax.bar(names, vals, color=["tab:gray", "tab:green", "tab:blue"])
    for b, v in zip(bars, vals, strict=True):
        at = (b.get_x() + b.get_width() / 2, v)
        ax.annotate(f"{v:.2f}", at, ha="center", va="bottom", fontsize=10)
    ax.set_ylabel("latency per token (ms)")
    ax.set_title("One device: per-token latency")
    return _save(plt, fig, out, "latency.png")
