"""``report.md`` and the PNG plots of ``sled bench paper``, from typed result records.

:func:`write_report` reads the run's results document into :class:`PaperResults`
(:mod:`bench.sim.results`); each section below renders one experiment of it, and the
figures come from :mod:`bench.sim.plots`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.sim import plots
from bench.sim.realpair import report_lines
from bench.sim.report_regime import regime_section, server_bound_section
from bench.sim.results import (
    CAPACITY_MODES,
    SWEEP_MODES,
    AcceptanceRow,
    CostRow,
    PaperResults,
    Point,
    SweepRow,
    Timing,
    WstgrSweep,
)

PAPER_WSTGR_RATIO = 2.2
PAPER_CAPACITY_RATIOS = (2.60, 2.86, 2.77)  # Pi 4B, Pi 5, Jetson (Table I)
MAX_LISTED = 20  # violations and errors listed, at most
# (c) plots: x key, x label, file
SPECULATIVE_PLOT = ("max_draft", "speculative length (drafts per round)", "speculative.png")
THRESHOLD_PLOT = ("threshold", "confidence threshold", "threshold.png")


def _fmt(x: Any, digits: int = 1) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A markdown table and the blank line after it."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [
        "| " + " | ".join(_fmt(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows
    ]
    return ["\n".join(lines), ""]


def write_report(out: Path, results: Mapping[str, Any]) -> None:
    """Write ``report.md`` and the plots for a results document into ``out``."""
    r = PaperResults.from_dict(results)
    md = ["# SLED paper benchmark", "", *_intro(r)]
    if not r.lossless:
        md += _not_lossless(r.violations)
    md += _headline(r)
    md += _setup(r)
    if r.wstgr:
        md += _wstgr(out, r.wstgr, r.setup.rate_target)
    if r.speculative:
        md += _speculative(out, r.speculative)
    if r.threshold:
        md += _threshold(out, r.threshold)
    if r.cost is not None:
        md += _cost(out, r)
    if r.acceptance_offline:
        md += _acceptance(out, r.acceptance_offline)
    if r.profiles_live:
        md += _profiles_live(r.profiles_live)
    if r.hf:
        md += _one_device(out, r)
    md += report_lines(results.get("real_pair"))  # bench/sim/realpair.py
    md += server_bound_section(results)
    md += regime_section(out, results)
    if r.errors:
        md += ["## Errors seen", "", *[f"* {e}" for e in r.errors[:MAX_LISTED]], ""]
    (out / "report.md").write_text("\n".join(md) + "\n")


def _intro(r: PaperResults) -> list[str]:
    s = r.setup
    return [
        f"Mode: {'quick' if s.quick else 'full'}; {s.cpu_count} CPUs; verifier torch "
        f"threads {s.threads}; runtime {s.runtime_s:.0f} s; load average "
        f"{s.load_average_start[0]:.1f} at the start and {s.load_average_end[0]:.1f} "
        "at the end (other jobs on the machine inflate latencies and lower rates). "
        "Simulated devices replay recorded draft traces at a device profile's drafting "
        "speed; the verifier (`sled verifier`), the broker (private Mosquitto) and the "
        "target model are real.",
        "",
    ]


def _not_lossless(violations: Sequence[str]) -> list[str]:
    return [
        "## NOT LOSSLESS — throughput withheld",
        "",
        "Committed tokens differed from the target's own greedy output, so no "
        "throughput figure from this run is reported. Violations:",
        "",
        *[f"* {v}" for v in violations[:MAX_LISTED]],
        "",
    ]


def _headline(r: PaperResults) -> list[str]:
    h = r.headline
    rows = [
        ["WSTGR SLED / centralized at 16 devices", _fmt(h.wstgr_ratio_16, 2)],
        [
            "same, SLED devices drafting instantly (server-bound)",
            _fmt(h.wstgr_ratio_16_server_bound, 2),
        ],
        ["capacity SLED (devices)", _fmt(h.capacity_sled, 2)],
        ["capacity centralized (devices)", _fmt(h.capacity_centralized, 2)],
        ["capacity ratio", _fmt(h.capacity_ratio, 2)],
        ["per-token latency SLED / HF assisted (1 device)", _fmt(h.hf_assisted_latency_ratio, 2)],
        ["lossless", str(r.lossless).lower()],
    ]
    paper = [f"{PAPER_WSTGR_RATIO}x", "—", "5.24–19.53", "1.83–7.06", "2.60–2.86x", "—", "yes"]
    table = [[*row, p] for row, p in zip(rows, paper, strict=True)]
    return ["## Headline", "", *_table(["metric", "measured", "paper"], table)]


def _setup(r: PaperResults) -> list[str]:
    s, prof = r.setup, r.setup.profile
    md = ["## Setup", ""]
    if s.oracle_params and s.oracle_model is not None and s.alpha is not None:
        om = s.oracle_model
        md.append(
            f"* (a)–(d) use the **oracle** setup: a random-weight Llama target with "
            f"{s.oracle_params / 1e6:.1f}M parameters (hidden {om.hidden}, "
            f"{om.layers} layers, MLP {om.intermediate}), drafts that equal the "
            f"target's greedy continuation with per-token probability α = {s.alpha:g}, "
            f"{s.max_draft} drafts per round; devices: {prof.label} profile "
            f"({prof.draft_tokens_per_s:g} drafted tokens/s)."
        )
    if s.demo_models:
        md.append(
            f"* (c) threshold sweep, (e) and (f) use the demo models in `{s.demo_models}` "
            "(4.2M-parameter target, distilled drafters `drafter-1l`, `drafter-2l`) with "
            "traces recorded from the ONNX drafter runtime of the edge node."
        )
    md.append(f"* Rate target for capacity: {s.rate_target:g} tokens/s per device.")
    md.append(
        "* Device profiles (approximate llama.cpp community figures for ~1B Q4 models, not "
        "measurements of this project):"
    )
    for name, p in s.profiles.items():
        md.append(f"  * `{name}` {p.label}: {p.draft_tokens_per_s:g} tokens/s — {p.source}")
    md.append("")
    return md


WSTGR_HEADER = (
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
)


def _wstgr_row(mode: str, q: Point) -> list[Any]:
    cores = q.verifier_cpu_cores
    return [
        mode,
        q.devices,
        q.wstgr,
        q.mean_rate,
        q.min_rate,
        q.latency_p50_ms,
        q.latency_p99_ms,
        _fmt(q.mean_accepted, 2) if mode != "centralized" else "—",
        _fmt(cores, 2),
        _fmt(q.wstgr / cores, 0) if cores > 0 else "—",
        _fmt(q.driver_cpu_cores, 2),
    ]


def _wstgr(out: Path, wc: WstgrSweep, rate_target: float) -> list[str]:
    """Experiments (a) WSTGR vs devices and (b) capacity."""
    png = plots.plot_wstgr(out, wc, "WSTGR vs devices (oracle target)")
    rows = [_wstgr_row(mode, q) for mode in SWEEP_MODES for q in wc.points.get(mode, ())]
    md = ["## (a) WSTGR vs devices", "", f"![WSTGR]({png})", ""]
    md += _table(WSTGR_HEADER, rows)
    md += [
        "*sled_instant*: SLED devices that draft in no time, so the verifier alone limits "
        "the rate (the server-bound regime of the paper's Fig. 4). "
        "Latency: SLED — draft request to verdict; centralized — request to first tokens. "
        "CPU columns: CPU seconds per wall second of the verifier process and of the "
        "benchmark driver; *tokens per verifier CPU-s* is less sensitive to other load on "
        "the machine than tokens/s.",
        "",
        "## (b) Capacity",
        "",
        f"![capacity]({plots.plot_capacity(out, wc, rate_target)})",
        "",
    ]
    caps = [(mode, wc.capacity[mode]) for mode in CAPACITY_MODES]
    passed = "yes (all measured counts passed)"
    rows = [
        [mode, c.devices, _fmt(c.interpolated, 2), passed if c.lower_bound else "no"]
        for mode, c in caps
    ]
    return md + _table(["mode", "capacity (devices)", "interpolated", "lower bound only"], rows)


def _sweep_table(first: str, rows: Sequence[SweepRow], *, by_threshold: bool) -> list[str]:
    """The (c) table: one row per policy, keyed by drafts per round or threshold."""
    header = [first, "per-device rate (tok/s)", "at devices", "capacity", "accepted/round"]
    header += ["acceptance"] if by_threshold else []
    header += ["verifier CPU-ms per token (most devices)"]
    table = []
    for s in rows:
        row: list[Any] = [f"{s.threshold:g}" if by_threshold else s.max_draft]
        row += [s.device_rate, s.device_rate_at]
        row += [_fmt(s.capacity, 2) + (" (≥)" if s.capacity_lower_bound else "")]
        row += [_fmt(s.mean_accepted, 2)]
        row += [_fmt(s.acceptance_rate, 2)] if by_threshold else []
        row += [_fmt(s.verifier_cpu_ms_per_token, 2)]
        table.append(row)
    return _table(header, table)


def _speculative(out: Path, rows: Sequence[SweepRow]) -> list[str]:
    """Experiment (c), oracle target: drafts per round."""
    title = "Oracle target: per-device rate vs capacity"
    png = plots.plot_speculative(out, rows, *SPECULATIVE_PLOT, title)
    md = ["## (c) Speculative length and confidence threshold", "", f"![speculative]({png})", ""]
    return md + _sweep_table("drafts/round", rows, by_threshold=False)


def _threshold(out: Path, rows: Sequence[SweepRow]) -> list[str]:
    """Experiment (c), demo models: confidence threshold."""
    title = "Demo models: per-device rate vs capacity"
    png = plots.plot_speculative(out, rows, *THRESHOLD_PLOT, title)
    return [f"![threshold]({png})", "", *_sweep_table("threshold", rows, by_threshold=True)]


def _cost(out: Path, r: PaperResults) -> list[str]:
    """Experiment (d): cost per 1K tokens and the Pareto fronts."""
    s, cost = r.setup, r.cost or ()
    md = [
        "## (d) Cost per 1K tokens (eq. 2)",
        "",
        f"Devices: {s.profile.label}; server ${s.server_price_usd:g}, "
        f"{s.server_power_w:g} W; 3 years at 70 % utilisation, $0.083/kWh. "
        "Devices are counted in every deployment; all-edge = the drafter alone "
        "on each device at the profile's speed.",
        "",
        f"![cost]({plots.plot_cost(out, cost)})",
        "",
    ]
    header = ["mode", "devices", "tokens/s", "$ / 1K tokens", "Pareto (all)"]
    header += ["Pareto (target quality)"]
    md += _table(header, [_cost_row(c) for c in cost])
    md += [
        "All-edge text comes from the drafter alone (not the target), so the second "
        "front keeps only centralized and SLED, whose output is the target's.",
        "",
    ]
    return md


def _cost_row(c: CostRow) -> list[Any]:
    yes = ("yes" if c.pareto else "", "yes" if c.pareto_target_quality else "")
    return [c.mode, c.devices, c.tokens_per_s, f"{c.usd_per_1k:.5f}", *yes]


def _acceptance(out: Path, rows: Sequence[AcceptanceRow]) -> list[str]:
    """Experiment (e), offline: acceptance from the recorded traces."""
    md = [
        "## (e) Acceptance per drafter, threshold and device profile",
        "",
        f"![acceptance]({plots.plot_acceptance(out, rows)})",
        "",
        "Greedy acceptance from the recorded traces (independent of timing):",
        "",
    ]
    header = ["drafter", "max_draft", "threshold", "acceptance", "accepted/round"]
    header += ["drafted/round"]
    return md + _table(header, [_acceptance_row(a) for a in rows])


def _acceptance_row(a: AcceptanceRow) -> list[Any]:
    rates = (_fmt(a.acceptance_rate, 3), _fmt(a.mean_accepted, 2), _fmt(a.mean_drafted, 2))
    return [a.drafter, a.max_draft, f"{a.threshold:g}", *rates]


def _profiles_live(points: Sequence[Point]) -> list[str]:
    """Experiment (e), live: one run per device profile."""
    header = ["profile", "drafter", "devices", "rate/device (tok/s)", "acceptance"]
    header += ["accepted/round", "p50 latency (ms)"]
    intro = "Live runs per device profile (demo target, k=8, threshold 0.1):"
    return [intro, "", *_table(header, [_profile_row(q) for q in points])]


def _profile_row(q: Point) -> list[Any]:
    accepted = (_fmt(q.acceptance_rate, 3), _fmt(q.mean_accepted, 2))
    return [q.profile, q.drafter, q.devices, q.mean_rate, *accepted, q.latency_p50_ms]


def _one_device(out: Path, r: PaperResults) -> list[str]:
    """Experiment (f): per-token latency of one device, SLED vs HF assisted."""
    hf, single, live = r.hf, r.sled_single, r.sled_live
    md = [
        "## (f) One device: SLED over MQTT vs HF assisted generation",
        "",
        "Same model pair (demo target + `drafter-2l`), greedy, k=8, threshold 0.1, "
        "same prompts; time per generated token including the prompt's prefill.",
        "",
    ]
    if live:
        md += [f"![latency]({plots.plot_latency(out, hf, live.ms_per_token)})", ""]
    rows: list[tuple[str, float]] = [
        ("target only (HF generate, greedy, one process)", hf["target_only"].ms_per_token),
        ("HF assisted generation (one process)", hf["assisted"].ms_per_token),
    ]
    if live:
        setup = "SLED: real edge node (ONNX drafter) + `sled verifier` over MQTT"
        rows.append((setup, live.ms_per_token))
    if single and single.ms_per_token is not None:
        setup = (
            "SLED: trace replay at the drafter's measured speed here "
            f"({single.draft_tokens_per_s:.0f} tokens/s)"
        )
        rows.append((setup, single.ms_per_token))
    md += _table(["setup", "ms per token"], [[a, _fmt(b, 2)] for a, b in rows])
    md += [
        f"HF assisted output equals target-only greedy: {hf['assisted'].lossless}; "
        f"live edge node output equals it: {_lossless(live)}.",
        "",
    ]
    return md


def _lossless(timing: Timing | None) -> str:
    return str(timing.lossless) if timing else "—"
