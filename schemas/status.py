"""Retained presence of the nodes: who is online, with which model and tokenizer.

Both records are published retained on each node's status topic and are also the
node's MQTT Last Will (``online=False``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from schemas.record import (
    MODES,
    Limits,
    Record,
    check_choice,
    check_ident,
    check_nonneg,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeStatus(Record):
    """What both nodes announce: online or not, their model and tokenizer."""

    online: bool
    model: str = ""
    fingerprint: str = ""  # tokenizer fingerprint (schemas.tokenizer)
    vocab_size: int = 0
    sent_at_ns: int = 0

    def check_node(self, kind: str, node_id: str, limits: Limits) -> None:
        check_ident(f"{kind}_status.{kind}", node_id, limits)
        check_nonneg(f"{kind}_status.vocab_size", self.vocab_size)


@dataclass(frozen=True, slots=True)
class DeviceStatus(NodeStatus):
    """Device → all on ``…/dev/{device}/status`` (retained; also the Last Will, online=False)."""

    KIND: ClassVar[str] = "device_status"

    device: str
    modes: list[str] = field(default_factory=list)

    def check(self, limits: Limits) -> None:
        self.check_node("device", self.device, limits)
        for m in self.modes:
            check_choice("device_status.modes", m, MODES)


@dataclass(frozen=True, slots=True)
class VerifierStatus(NodeStatus):
    """Verifier → all on ``…/verifier/{id}/status`` (retained; also the Last Will).

    Devices choose their verifier from these (:mod:`runtime.assignment`): an online
    verifier with ``capacity`` > 0 reads ``…/dev/+/draft/{id}`` and wins a share of the
    devices in proportion to its capacity; capacity 0 (a share-group verifier, or one
    from before sticky assignment) takes only the plain draft topic. The verifier
    re-announces itself with its current ``load`` every few seconds; ``started_at_ns``
    stays the same for its whole run, so a device tells a refresh from a restart.
    """

    KIND: ClassVar[str] = "verifier_status"

    verifier: str
    max_batch: int = 0  # requests per verification batch
    capacity: float = 0.0  # relative weight in the devices' choice; 0: no assigned drafts
    load: int = 0  # live sessions when sent
    started_at_ns: int = 0  # when this run began listening (0 in the birth message)

    def check(self, limits: Limits) -> None:
        self.check_node("verifier", self.verifier, limits)
        check_nonneg("verifier_status.max_batch", self.max_batch)
        check_nonneg("verifier_status.capacity", self.capacity)
        check_nonneg("verifier_status.load", self.load)
        check_nonneg("verifier_status.started_at_ns", self.started_at_ns)
