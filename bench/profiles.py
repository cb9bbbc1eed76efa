"""Device and server profiles used by the paper benchmark (pure data, no I/O).

A *device profile* says how fast a class of edge device drafts tokens with a ~1B
parameter drafter quantised to 4 bits (llama.cpp ``Q4_K_M``/``Q4_0``), what it costs and
what it draws. The simulated devices of ``sled bench paper`` replay recorded draft traces
at ``draft_tokens_per_s``, so the verifier sees the request timing a real fleet of such
devices would produce while the drafting itself costs the benchmark machine nothing.

**These numbers are approximations**, not measurements of this project: they are
round figures from public llama.cpp community reports for ~1B Q4 models (TinyLlama
1.1B, Llama 3.2 1B) at batch 1 with short contexts. Individual boards differ by ±30 %
(cooling, memory clock, build flags, context length). See ``source`` on each profile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """One class of edge device.

    ``draft_tokens_per_s``: decode speed of a ~1B Q4 drafter, tokens/s (batch 1).
    ``price_usd``: purchase price, US dollars. ``power_w``: average draw while drafting,
    watts. ``drafter``: which demo drafter the device runs in the trace experiments.
    """

    name: str
    label: str
    draft_tokens_per_s: float
    price_usd: float
    power_w: float
    drafter: str
    source: str


_RPI_4B_SOURCE = (
    "llama.cpp community reports, Pi 4B 8 GB (Cortex-A72, ~6 GB/s usable memory "
    "bandwidth): TinyLlama-1.1B Q4 roughly 4-10 tok/s, typically 40-60 % of a Pi 5; "
    "we take 5 tok/s. Price: Pi 4B 4 GB list price; power: typical load draw."
)

_RPI_5_SOURCE = (
    "llama.cpp community reports, Pi 5 8 GB (Cortex-A76): TinyLlama-1.1B / "
    "Llama-3.2-1B Q4 about 8-12 tok/s; we take 10 tok/s. Price ($80) and power (8 W) "
    "are the paper's (refs [34], [35])."
)

_JETSON_ORIN_NANO_SOURCE = (
    "llama.cpp CUDA community benchmarks, Jetson Orin Nano (Super) 8 GB, 15-25 W "
    "modes: ~1B Q4 models at roughly 30-60 tok/s; we take 40 tok/s. Price: developer "
    "kit list price ($249); power: 15 W mode."
)

# name, label, draft tokens/s, price USD, power W, drafter, source
RPI_4B: Final = DeviceProfile(
    "rpi4b", "Raspberry Pi 4B", 5.0, 55.0, 6.0, "drafter-1l", _RPI_4B_SOURCE
)
RPI_5: Final = DeviceProfile("rpi5", "Raspberry Pi 5", 10.0, 80.0, 8.0, "drafter-2l", _RPI_5_SOURCE)
JETSON_ORIN_NANO: Final = DeviceProfile(
    "jetson", "Jetson Orin Nano", 40.0, 249.0, 15.0, "drafter-2l", _JETSON_ORIN_NANO_SOURCE
)

PROFILES: Final[dict[str, DeviceProfile]] = {p.name: p for p in (RPI_4B, RPI_5, JETSON_ORIN_NANO)}
"""Device profiles by name (``--profile`` values)."""


def profile_doc(p: DeviceProfile) -> dict[str, object]:
    """A profile as the benchmark's results document holds it."""
    return {
        "label": p.label,
        "draft_tokens_per_s": p.draft_tokens_per_s,
        "source": p.source,
        "drafter": p.drafter,
    }


@dataclass(frozen=True, slots=True)
class ServerProfile:
    """The verifier machine, for the cost model. Price in US dollars, power in watts."""

    label: str
    price_usd: float
    power_w: float


DEFAULT_SERVER: Final = ServerProfile(
    label="verifier server (flag --server-price-usd / --server-power-w)",
    price_usd=2000.0,
    power_w=150.0,
)
"""A modest CPU server; the benchmark's own machine is only a 2-core slice of one."""
