"""``report.md`` and the PNG plots of ``sled bench paper`` (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PAPER_WSTGR_RATIO = 2.2
PAPER_CAPACITY_RATIOS = (2.60, 2.86, 2.77)  # Pi 4B, Pi 5, Jetson (Table I)


def _fmt(x: Any, digits: int = 1) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [
        "| " + " | ".join(_fmt(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows
    ]
    return "\n".join(lines)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 11, "figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3})
    return plt


def plot_wstgr(out: Path, wc: dict[str, Any], title: str) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = {"sled": "SLED", "sled_instant": "SLED, instant drafting", "centralized": "centralized"}
    for mode, style in (("sled", "o-"), ("sled_instant", "^:"), ("centralized", "s--")):
        pts = wc["points"].get(mode, [])
        if not pts:
            continue
        ax.plot([q["devices"] for q in pts], [q["wstgr"] for q in pts], style, label=names[mode])
    ax.set_xlabel("devices")
    ax.set_ylabel("WSTGR (verified tokens/s, whole system)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "wstgr.png")
    plt.close(fig)
    return "wstgr.png"


def plot_capacity(out: Path, wc: dict[str, Any], target: float) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode, style in (("sled", "o-"), ("centralized", "s--")):
        table = wc["capacity"][mode]["table"]
        xs = sorted(int(n) for n in table)
        cap = wc["capacity"][mode]["interpolated"]
        name = "SLED" if mode == "sled" else "centralized"
        ax.plot(
            xs,
            [table[n] if n in table else table[str(n)] for n in xs],
            style,
            label=f"{name} (capacity {cap:.1f})",
        )
    ax.axhline(target, color="red", lw=1, ls=":", label=f"rate target {target:g} tokens/s")
    ax.set_xlabel("devices")
    ax.set_ylabel("slowest device's rate (tokens/s)")
    ax.set_title("Capacity: devices served at the response-rate target")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "capacity.png")
    plt.close(fig)
    return "capacity.png"


def plot_speculative(
    out: Path, rows: list[dict[str, Any]], key: str, xlabel: str, name: str, title: str
) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [r[key] for r in rows]
    ax.plot(
        xs,
        [r["device_rate"] for r in rows],
        "o-",
        color="tab:blue",
        label="per-device rate (lightest load)",
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("per-device rate (tokens/s)", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(
        xs,
        [r["capacity"] for r in rows],
        "s--",
        color="tab:orange",
        label="capacity (devices; hollow: lower bound)",
    )
    bounds = [r for r in rows if r["capacity_lower_bound"]]
    ax2.plot(
        [r[key] for r in bounds],
        [r["capacity"] for r in bounds],
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
    fig.tight_layout()
    fig.savefig(out / name)
    plt.close(fig)
    return name


def plot_cost(out: Path, cost: dict[str, Any]) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"all-edge": "^", "centralized": "s", "sled": "o"}
    for mode, marker in styles.items():
        rows = [r for r in cost["rows"] if r["mode"] == mode]
        ax.scatter(
            [r["usd_per_1k"] for r in rows],
            [r["tokens_per_s"] for r in rows],
            marker=marker,
            s=45,
            label=mode if mode != "sled" else "SLED",
        )
        for r in rows:
            ax.annotate(
                f"{r['devices']}",
                (r["usd_per_1k"], r["tokens_per_s"]),
                textcoords="offset points",
                xytext=(4, 3),
                fontsize=8,
            )
    for flag, color, size, name in (
        ("pareto", "black", 14, "Pareto front (all)"),
        ("pareto_target_quality", "red", 19, "Pareto front (target quality)"),
    ):
        front = sorted((r for r in cost["rows"] if r.get(flag)), key=lambda r: r["usd_per_1k"])
        ax.plot(
            [r["usd_per_1k"] for r in front],
            [r["tokens_per_s"] for r in front],
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
    fig.tight_layout()
    fig.savefig(out / "cost.png")
    plt.close(fig)
    return "cost.png"


def plot_acceptance(out: Path, rows: list[dict[str, Any]]) -> str:
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    for drafter in sorted({r["drafter"] for r in rows}):
        for k in sorted({r["max_draft"] for r in rows}):
            sel = [r for r in rows if r["drafter"] == drafter and r["max_draft"] == k]
            xs = [r["threshold"] for r in sel]
            ax1.plot(xs, [r["acceptance_rate"] for r in sel], "o-", label=f"{drafter}, k={k}")
            ax2.plot(xs, [r["mean_accepted"] for r in sel], "o-", label=f"{drafter}, k={k}")
    ax1.set_xlabel("confidence threshold")
    ax1.set_ylabel("acceptance rate (accepted / drafted)")
    ax2.set_xlabel("confidence threshold")
    ax2.set_ylabel("mean accepted drafts per round")
    ax1.legend(fontsize=9)
    fig.suptitle("Greedy acceptance of the demo drafters (max_draft k)")
    fig.tight_layout()
    fig.savefig(out / "acceptance.png")
    plt.close(fig)
    return "acceptance.png"


def plot_latency(out: Path, hf: dict[str, Any], sled_ms: float) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    names = ["target only\n(HF, greedy)", "HF assisted\n(one process)", "SLED\n(over MQTT)"]
    vals = [hf["target_only"]["ms_per_token"], hf["assisted"]["ms_per_token"], sled_ms]
    bars = ax.bar(names, vals, color=["tab:gray", "tab:green", "tab:blue"])
    for b, v in zip(bars, vals, strict=True):
        ax.annotate(
            f"{v:.2f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=10
        )
    ax.set_ylabel("latency per token (ms)")
    ax.set_title("One device: per-token latency")
    fig.tight_layout()
    fig.savefig(out / "latency.png")
    plt.close(fig)
    return "latency.png"


def write_report(out: Path, r: dict[str, Any]) -> None:
    """Write ``report.md`` and the plots for results ``r`` into ``out``."""
    md: list[str] = ["# SLED paper benchmark", ""]
    md.append(
        f"Mode: {'quick' if r['quick'] else 'full'}; {r.get('cpu_count')} CPUs; verifier torch "
        f"threads {r['threads']}; runtime {r.get('runtime_s', 0):.0f} s; load average "
        f"{r['load_average_start'][0]:.1f} at the start and {r['load_average_end'][0]:.1f} "
        "at the end (other jobs on the machine inflate latencies and lower rates). "
        "Simulated devices replay recorded draft traces at a device profile's drafting "
        "speed; the verifier (`sled verifier`), the broker (private Mosquitto) and the "
        "target model are real."
    )
    md.append("")
    if not r["lossless"]:
        md += [
            "## NOT LOSSLESS — throughput withheld",
            "",
            "Committed tokens differed from the target's own greedy output, so no "
            "throughput figure from this run is reported. Violations:",
            "",
            *[f"* {v}" for v in r["violations"][:20]],
            "",
        ]
    md += [
        "## Headline",
        "",
        _table(
            ["metric", "measured", "paper"],
            [
                [
                    "WSTGR SLED / centralized at 16 devices",
                    _fmt(r["wstgr_ratio_16"], 2),
                    f"{PAPER_WSTGR_RATIO}x",
                ],
                [
                    "same, SLED devices drafting instantly (server-bound)",
                    _fmt(r.get("wstgr_ratio_16_server_bound"), 2),
                    "—",
                ],
                ["capacity SLED (devices)", _fmt(r["capacity_sled"], 2), "5.24–19.53"],
                ["capacity centralized (devices)", _fmt(r["capacity_centralized"], 2), "1.83–7.06"],
                ["capacity ratio", _fmt(r["capacity_ratio"], 2), "2.60–2.86x"],
                [
                    "per-token latency SLED / HF assisted (1 device)",
                    _fmt(r["hf_assisted_latency_ratio"], 2),
                    "—",
                ],
                ["lossless", str(r["lossless"]).lower(), "yes"],
            ],
        ),
        "",
    ]
    prof = r["profile"]
    md += ["## Setup", ""]
    if r.get("oracle_params"):
        om = r["oracle_model"]
        md.append(
            f"* (a)–(d) use the **oracle** setup: a random-weight Llama target with "
            f"{r['oracle_params'] / 1e6:.1f}M parameters (hidden {om['hidden']}, "
            f"{om['layers']} layers, MLP {om['intermediate']}), drafts that equal the "
            f"target's greedy continuation with per-token probability α = {r['alpha']:g}, "
            f"{r['max_draft']} drafts per round; devices: {prof['label']} profile "
            f"({prof['draft_tokens_per_s']:g} drafted tokens/s)."
        )
    if r.get("demo_models"):
        md.append(
            f"* (c) threshold sweep, (e) and (f) use the demo models in `{r['demo_models']}` "
            "(4.2M-parameter target, distilled drafters `drafter-1l`, `drafter-2l`) with "
            "traces recorded from the ONNX drafter runtime of the edge node."
        )
    md.append(f"* Rate target for capacity: {r['rate_target']:g} tokens/s per device.")
    md.append(
        "* Device profiles (approximate llama.cpp community figures for ~1B Q4 models, not "
        "measurements of this project):"
    )
    for name, p in r["profiles"].items():
        md.append(
            f"  * `{name}` {p['label']}: {p['draft_tokens_per_s']:g} tokens/s — {p['source']}"
        )
    md.append("")

    wc = r.get("wstgr")
    if wc:
        md += [
            "## (a) WSTGR vs devices",
            "",
            f"![WSTGR]({plot_wstgr(out, wc, 'WSTGR vs devices (oracle target)')})",
            "",
        ]
        rows = []
        for mode in ("sled", "sled_instant", "centralized"):
            for q in wc["points"].get(mode, []):
                rows.append(
                    [
                        mode,
                        q["devices"],
                        q["wstgr"],
                        q["mean_rate"],
                        q["min_rate"],
                        q["latency_p50_ms"],
                        q["latency_p99_ms"],
                        _fmt(q["mean_accepted"], 2) if mode != "centralized" else "—",
                        _fmt(q["verifier_cpu_cores"], 2),
                        _fmt(q["wstgr"] / q["verifier_cpu_cores"], 0)
                        if q["verifier_cpu_cores"] > 0
                        else "—",
                        _fmt(q.get("driver_cpu_cores"), 2),
                    ]
                )
        md += [
            _table(
                [
                    "mode",
                    "devices",
                    "WSTGR (tok/s)",
                    "mean rate (tok/s)",
                    "min rate (tok/s)",
                    "p50 latency (ms)",
                    "p99 latency (ms)",
                    "accepted/round",
                    "verifier CPU (cores)",
                    "tokens per verifier CPU-s",
                    "driver CPU (cores)",
                ],
                rows,
            ),
            "",
            "*sled_instant*: SLED devices that draft in no time, so the verifier alone limits "
            "the rate (the server-bound regime of the paper's Fig. 4). "
            "Latency: SLED — draft request to verdict; centralized — request to first tokens. "
            "CPU columns: CPU seconds per wall second of the verifier process and of the "
            "benchmark driver; *tokens per verifier CPU-s* is less sensitive to other load on "
            "the machine than tokens/s.",
            "",
            "## (b) Capacity",
            "",
            f"![capacity]({plot_capacity(out, wc, r['rate_target'])})",
            "",
        ]
        rows = []
        for mode in ("sled", "centralized"):
            c = wc["capacity"][mode]
            rows.append(
                [
                    mode,
                    c["devices"],
                    _fmt(c["interpolated"], 2),
                    "yes (all measured counts passed)" if c["lower_bound"] else "no",
                ]
            )
        md += [_table(["mode", "capacity (devices)", "interpolated", "lower bound only"], rows), ""]
    spec = r.get("speculative")
    if spec:
        png = plot_speculative(
            out,
            spec,
            "max_draft",
            "speculative length (drafts per round)",
            "speculative.png",
            "Oracle target: per-device rate vs capacity",
        )
        md += [
            "## (c) Speculative length and confidence threshold",
            "",
            f"![speculative]({png})",
            "",
        ]
        rows = [
            [
                s["max_draft"],
                s["device_rate"],
                s["device_rate_at"],
                _fmt(s["capacity"], 2) + (" (≥)" if s["capacity_lower_bound"] else ""),
                _fmt(s["mean_accepted"], 2),
                _fmt(s.get("verifier_cpu_ms_per_token"), 2),
            ]
            for s in spec
        ]
        md += [
            _table(
                [
                    "drafts/round",
                    "per-device rate (tok/s)",
                    "at devices",
                    "capacity",
                    "accepted/round",
                    "verifier CPU-ms per token (most devices)",
                ],
                rows,
            ),
            "",
        ]
    thr = r.get("threshold")
    if thr:
        png = plot_speculative(
            out,
            thr,
            "threshold",
            "confidence threshold",
            "threshold.png",
            "Demo models: per-device rate vs capacity",
        )
        md += [
            f"![threshold]({png})",
            "",
        ]
        rows = [
            [
                f"{s['threshold']:g}",
                s["device_rate"],
                s["device_rate_at"],
                _fmt(s["capacity"], 2) + (" (≥)" if s["capacity_lower_bound"] else ""),
                _fmt(s["mean_accepted"], 2),
                _fmt(s["acceptance_rate"], 2),
                _fmt(s.get("verifier_cpu_ms_per_token"), 2),
            ]
            for s in thr
        ]
        md += [
            _table(
                [
                    "threshold",
                    "per-device rate (tok/s)",
                    "at devices",
                    "capacity",
                    "accepted/round",
                    "acceptance",
                    "verifier CPU-ms per token (most devices)",
                ],
                rows,
            ),
            "",
        ]
    cost = r.get("cost")
    if cost:
        md += [
            "## (d) Cost per 1K tokens (eq. 2)",
            "",
            f"Devices: {prof['label']}; server ${r['server']['price_usd']:g}, "
            f"{r['server']['power_w']:g} W; 3 years at 70 % utilisation, $0.083/kWh. "
            "Devices are counted in every deployment; all-edge = the drafter alone "
            "on each device at the profile's speed.",
            "",
            f"![cost]({plot_cost(out, cost)})",
            "",
        ]
        rows = [
            [
                c["mode"],
                c["devices"],
                c["tokens_per_s"],
                f"{c['usd_per_1k']:.5f}",
                "yes" if c["pareto"] else "",
                "yes" if c.get("pareto_target_quality") else "",
            ]
            for c in cost["rows"]
        ]
        md += [
            _table(
                [
                    "mode",
                    "devices",
                    "tokens/s",
                    "$ / 1K tokens",
                    "Pareto (all)",
                    "Pareto (target quality)",
                ],
                rows,
            ),
            "",
            "All-edge text comes from the drafter alone (not the target), so the second "
            "front keeps only centralized and SLED, whose output is the target's.",
            "",
        ]
    acc = r.get("acceptance_offline")
    if acc:
        md += [
            "## (e) Acceptance per drafter, threshold and device profile",
            "",
            f"![acceptance]({plot_acceptance(out, acc)})",
            "",
            "Greedy acceptance from the recorded traces (independent of timing):",
            "",
        ]
        rows = [
            [
                a["drafter"],
                a["max_draft"],
                f"{a['threshold']:g}",
                _fmt(a["acceptance_rate"], 3),
                _fmt(a["mean_accepted"], 2),
                _fmt(a["mean_drafted"], 2),
            ]
            for a in acc
        ]
        md += [
            _table(
                [
                    "drafter",
                    "max_draft",
                    "threshold",
                    "acceptance",
                    "accepted/round",
                    "drafted/round",
                ],
                rows,
            ),
            "",
        ]
    live = r.get("profiles_live")
    if live:
        md += ["Live runs per device profile (demo target, k=8, threshold 0.1):", ""]
        rows = [
            [
                q["profile"],
                q["drafter"],
                q["devices"],
                q["mean_rate"],
                _fmt(q["acceptance_rate"], 3),
                _fmt(q["mean_accepted"], 2),
                q["latency_p50_ms"],
            ]
            for q in live
        ]
        md += [
            _table(
                [
                    "profile",
                    "drafter",
                    "devices",
                    "rate/device (tok/s)",
                    "acceptance",
                    "accepted/round",
                    "p50 latency (ms)",
                ],
                rows,
            ),
            "",
        ]
    hf = r.get("hf")
    single = r.get("sled_single")
    live_edge = r.get("sled_live")
    if hf:
        md += [
            "## (f) One device: SLED over MQTT vs HF assisted generation",
            "",
            "Same model pair (demo target + `drafter-2l`), greedy, k=8, threshold 0.1, "
            "same prompts; time per generated token including the prompt's prefill.",
            "",
        ]
        if live_edge:
            md += [f"![latency]({plot_latency(out, hf, live_edge['ms_per_token'])})", ""]
        rows = [
            ["target only (HF generate, greedy, one process)", hf["target_only"]["ms_per_token"]],
            ["HF assisted generation (one process)", hf["assisted"]["ms_per_token"]],
        ]
        if live_edge:
            rows.append(
                [
                    "SLED: real edge node (ONNX drafter) + `sled verifier` over MQTT",
                    live_edge["ms_per_token"],
                ]
            )
        if single and "ms_per_token" in single:
            rows.append(
                [
                    "SLED: trace replay at the drafter's measured speed here "
                    f"({single['draft_tokens_per_s']:.0f} tokens/s)",
                    single["ms_per_token"],
                ]
            )
        md += [
            _table(["setup", "ms per token"], [[a, _fmt(b, 2)] for a, b in rows]),
            "",
            f"HF assisted output equals target-only greedy: {hf['assisted']['lossless']}; "
            f"live edge node output equals it: "
            f"{live_edge['lossless'] if live_edge else '—'}.",
            "",
        ]
    if r.get("errors"):
        md += ["## Errors seen", "", *[f"* {e}" for e in r["errors"][:20]], ""]
    (out / "report.md").write_text("\n".join(md) + "\n")
