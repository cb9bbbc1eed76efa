"""Typed records of one ``sled bench paper`` run, read from its results document.

The run (:mod:`bench.sim.driver`) writes plain JSON-ready data (``results.json``, whose
keys stay as they are); the report (:mod:`bench.sim.report`) reads it back through
:meth:`PaperResults.from_dict` and works on these records only. Units: rates in tokens/s,
latencies in ms, CPU in cores (CPU seconds per wall second), money in USD.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeVar

R = TypeVar("R")

SWEEP_MODES = ("sled", "sled_instant", "centralized")  # the point series of (a)
CAPACITY_MODES = ("sled", "centralized")  # the series of (b)


def _record(cls: type[R], doc: Mapping[str, Any]) -> R:
    """``cls`` from the keys of ``doc`` that are its fields (others are ignored)."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in doc.items() if k in names})


def _records(cls: type[R], docs: Sequence[Mapping[str, Any]] | None) -> tuple[R, ...]:
    return tuple(_record(cls, d) for d in docs or ())


@dataclass(frozen=True)
class Point:
    """One measured fleet point: ``devices`` simulated devices in ``mode``."""

    mode: str
    devices: int
    wstgr: float  # verified tokens/s of the whole system
    mean_rate: float  # per device, tokens/s
    min_rate: float
    latency_p50_ms: float
    latency_p99_ms: float
    mean_accepted: float  # accepted drafts per round
    acceptance_rate: float
    verifier_cpu_cores: float
    driver_cpu_cores: float | None = None
    profile: str = ""  # device profile name (profile runs only)
    drafter: str = ""


@dataclass(frozen=True)
class Capacity:
    """Devices served at the rate target, and the slowest device's rate per count."""

    devices: int
    interpolated: float
    lower_bound: bool  # every measured count passed: capacity is at least this
    table: dict[int, float]  # devices -> slowest device's rate, tokens/s

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Capacity:
        table = {int(n): float(rate) for n, rate in doc["table"].items()}
        return cls(doc["devices"], doc["interpolated"], doc["lower_bound"], table)


@dataclass(frozen=True)
class WstgrSweep:
    """Experiments (a) and (b): points per mode and the capacity of each mode."""

    points: dict[str, tuple[Point, ...]]  # mode -> points by device count
    capacity: dict[str, Capacity]

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> WstgrSweep:
        points = {mode: _records(Point, pts) for mode, pts in doc["points"].items()}
        capacity = {mode: Capacity.from_dict(c) for mode, c in doc["capacity"].items()}
        return cls(points, capacity)


@dataclass(frozen=True)
class SweepRow:
    """Experiment (c): one drafting policy, its per-device rate and capacity."""

    max_draft: int
    threshold: float
    device_rate: float  # mean per-device rate at the lightest load, tokens/s
    device_rate_at: int  # that load, devices
    capacity: float
    capacity_lower_bound: bool
    mean_accepted: float
    acceptance_rate: float
    verifier_cpu_ms_per_token: float | None = None  # at the heaviest load


@dataclass(frozen=True)
class CostRow:
    """Experiment (d): one deployment's cost (eq. 2) and throughput."""

    mode: str  # all-edge, centralized or sled
    devices: int
    tokens_per_s: float
    usd_per_1k: float
    pareto: bool
    pareto_target_quality: bool = False


@dataclass(frozen=True)
class AcceptanceRow:
    """Experiment (e), offline: greedy acceptance of one drafter and policy."""

    drafter: str
    max_draft: int
    threshold: float
    acceptance_rate: float
    mean_accepted: float
    mean_drafted: float


@dataclass(frozen=True)
class Timing:
    """Experiment (f): per-token latency of one setup over the same prompts."""

    ms_per_token: float
    tokens: int
    lossless: bool
    acceptance_rate: float | None = None


@dataclass(frozen=True)
class SingleReplay:
    """Experiment (f): one replayed device at the drafter's measured speed here."""

    draft_tokens_per_s: float
    ms_per_token: float | None = None  # None when the device committed nothing


@dataclass(frozen=True)
class ProfileInfo:
    """A device profile as the report describes it."""

    label: str
    draft_tokens_per_s: float
    source: str


@dataclass(frozen=True)
class OracleShape:
    hidden: int
    layers: int
    intermediate: int


@dataclass(frozen=True)
class Headline:
    """The headline ratios (None: not measured, or withheld when not lossless)."""

    wstgr_ratio_16: float | None
    capacity_sled: float | None
    capacity_centralized: float | None
    capacity_ratio: float | None
    hf_assisted_latency_ratio: float | None
    wstgr_ratio_16_server_bound: float | None = None


@dataclass(frozen=True)
class Setup:
    """How the run was set up and what the machine was doing."""

    quick: bool
    cpu_count: int | None
    threads: int
    runtime_s: float
    load_average_start: tuple[float, ...]
    load_average_end: tuple[float, ...]
    profile: ProfileInfo
    profiles: dict[str, ProfileInfo]
    rate_target: float
    oracle_params: int | None = None
    oracle_model: OracleShape | None = None
    alpha: float | None = None
    max_draft: int | None = None
    demo_models: str | None = None
    server_price_usd: float | None = None
    server_power_w: float | None = None


@dataclass(frozen=True)
class PaperResults:
    """Everything the report shows; empty or None where an experiment did not run."""

    setup: Setup
    headline: Headline
    lossless: bool
    violations: tuple[str, ...]
    errors: tuple[str, ...]
    wstgr: WstgrSweep | None
    speculative: tuple[SweepRow, ...]
    threshold: tuple[SweepRow, ...]
    cost: tuple[CostRow, ...] | None  # None: not run (rows may be empty when run)
    acceptance_offline: tuple[AcceptanceRow, ...]
    profiles_live: tuple[Point, ...]
    hf: dict[str, Timing]  # "target_only", "assisted"
    sled_single: SingleReplay | None
    sled_live: Timing | None

    @classmethod
    def from_dict(cls, r: Mapping[str, Any]) -> PaperResults:
        """Read a results document (as ``results.json`` holds it)."""
        server = r.get("server") or {}
        oracle = r.get("oracle_model")
        setup = Setup(
            quick=r["quick"],
            cpu_count=r.get("cpu_count"),
            threads=r["threads"],
            runtime_s=r.get("runtime_s", 0),
            load_average_start=tuple(r["load_average_start"]),
            load_average_end=tuple(r["load_average_end"]),
            profile=_record(ProfileInfo, r["profile"]),
            profiles={k: _record(ProfileInfo, p) for k, p in r["profiles"].items()},
            rate_target=r["rate_target"],
            oracle_params=r.get("oracle_params"),
            oracle_model=_record(OracleShape, oracle) if oracle else None,
            alpha=r.get("alpha"),
            max_draft=r.get("max_draft"),
            demo_models=r.get("demo_models"),
            server_price_usd=server.get("price_usd"),
            server_power_w=server.get("power_w"),
        )
        wc, cost, single, live = r.get("wstgr"), r.get("cost"), r.get("sled_single"), None
        if r.get("sled_live"):
            live = _record(Timing, r["sled_live"])
        return cls(
            setup=setup,
            headline=_record(Headline, r),
            lossless=r["lossless"],
            violations=tuple(r.get("violations", ())),
            errors=tuple(r.get("errors") or ()),
            wstgr=WstgrSweep.from_dict(wc) if wc else None,
            speculative=_records(SweepRow, r.get("speculative")),
            threshold=_records(SweepRow, r.get("threshold")),
            cost=_records(CostRow, cost["rows"]) if cost else None,
            acceptance_offline=_records(AcceptanceRow, r.get("acceptance_offline")),
            profiles_live=_records(Point, r.get("profiles_live")),
            hf={k: _record(Timing, t) for k, t in (r.get("hf") or {}).items()},
            sled_single=_record(SingleReplay, single) if single else None,
            sled_live=live,
        )
