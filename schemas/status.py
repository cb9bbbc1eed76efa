"""Retained presence of the nodes: who is online, with which model and tokenizer.

Both records are published retained on each node's status topic and are also the
node's MQTT Last Will (``online=False``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from schemas.record import MODES, Limits, Record, check_choice, check_ident, check_nonneg


@dataclass(frozen=True, slots=True)
class DeviceStatus(Record):
    """Device → all on ``…/dev/{device}/status`` (retained; also the Last Will, online=False)."""

    KIND: ClassVar[str] = "device_status"

    device: str
    online: bool
    model: str = ""
    fingerprint: str = ""
    vocab_size: int = 0
    modes: list[str] = field(default_factory=list)
    sent_at_ns: int = 0

    def check(self, limits: Limits) -> None:
        check_ident("device_status.device", self.device, limits)
        check_nonneg("device_status.vocab_size", self.vocab_size)
        for m in self.modes:
            check_choice("device_status.modes", m, MODES)


@dataclass(frozen=True, slots=True)
class VerifierStatus(Record):
    """Verifier → all on ``…/verifier/{id}/status`` (retained; also the Last Will)."""

    KIND: ClassVar[str] = "verifier_status"

    verifier: str
    online: bool
    model: str = ""
    fingerprint: str = ""
    vocab_size: int = 0
    max_batch: int = 0
    sent_at_ns: int = 0

    def check(self, limits: Limits) -> None:
        check_ident("verifier_status.verifier", self.verifier, limits)
        check_nonneg("verifier_status.vocab_size", self.vocab_size)
        check_nonneg("verifier_status.max_batch", self.max_batch)
