"""The verification round trip of one device and the adaptive timeout derived from it.

Pure: no clock is read here, the session passes the measured round trips in.
"""

from __future__ import annotations

from typing import Protocol


class TimeoutKnobs(Protocol):
    """The knobs the estimator reads (:class:`edge_node.policy.PolicyConfig` has them)."""

    @property
    def timeout_floor_s(self) -> float: ...
    @property
    def timeout_ceiling_s(self) -> float: ...
    @property
    def timeout_multiplier(self) -> float: ...
    @property
    def rtt_alpha(self) -> float: ...


class RttEstimator:
    """Verification round trip as an EWMA; the adaptive timeout derived from it.

    One per device (the link is shared by its sessions). Times are seconds.
    """

    def __init__(self, config: TimeoutKnobs) -> None:
        self._config = config
        self.ewma_s: float | None = None
        self.samples = 0

    def observe(self, rtt_s: float) -> None:
        if rtt_s < 0:
            return
        alpha = self._config.rtt_alpha
        self.ewma_s = rtt_s if self.ewma_s is None else (1 - alpha) * self.ewma_s + alpha * rtt_s
        self.samples += 1

    def timeout_s(self, failures: int = 0) -> float:
        """``multiplier x EWMA x 2**failures`` in ``[floor, ceiling]``; ceiling if unknown."""
        cfg = self._config
        if self.ewma_s is None:
            return cfg.timeout_ceiling_s
        raw = cfg.timeout_multiplier * self.ewma_s * 2 ** min(failures, 16)
        return min(cfg.timeout_ceiling_s, max(cfg.timeout_floor_s, raw))
