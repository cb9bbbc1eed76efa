"""The edge node's one config record, from CLI flags, ``SLED_*`` env vars and a TOML file.

Precedence, highest first: command-line flag, environment variable, TOML file, default.

* flag ``--device-id pi-1``        (every field; ``--no-async-drafting`` for booleans)
* env  ``SLED_DEVICE_ID=pi-1``      (``SLED_`` + the field name in upper case)
* TOML ``device_id = "pi-1"``       (top level or under ``[edge]``; file from ``--config``
  or ``SLED_CONFIG``)

Each field documents its unit; see ``sled edge --help`` for the list.
"""

from __future__ import annotations

import argparse
import math
import re
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from edge_node.policy import PolicyConfig
from runtime.config import ConfigError, NodeConfig, check_config_id, doc, setting
from runtime.config import add_config_arguments as _add_config_arguments
from schemas import MODES

DEFAULT_THRESHOLD = 0.1  # suits small drafters: their top probability is usually low

if TYPE_CHECKING:
    from runtime.transport import MqttConfig


def _default_device_id() -> str:
    host = re.sub(r"[^A-Za-z0-9_.\-]", "-", socket.gethostname())[:58] or "device"
    return f"edge-{host}"


@dataclass(frozen=True, slots=True)
class EdgeConfig(NodeConfig):
    """Everything an edge node needs: :class:`~runtime.config.NodeConfig` (the broker
    connection, logging), then these. Times carry their unit in the name."""

    TABLE: ClassVar[str] = "edge"

    device_id: str = field(
        default_factory=_default_device_id,
        metadata=doc("device id in topics (1-64 of A-Z a-z 0-9 _ . -); default edge-HOSTNAME"),
    )
    drafter_dir: str | None = setting(None, "exported drafter folder (sled export-drafter)")
    threads: int = setting(1, "onnxruntime intra-op threads")
    mode: str = setting("sled", "default serving mode: sled, local or centralized", choices=MODES)
    max_new_tokens: int = setting(64, "default generation budget per request, tokens")
    max_prompt_tokens: int = setting(
        4096,
        "longest prompt served, tokens (also at most the drafter's max_positions); a "
        "longer one ends at once with an error",
    )
    controller: str | None = setting(
        None,
        "how far to draft: adaptive (learned acceptance vs measured drafting time, round "
        "trip and verifier load; no threshold) or threshold (paper eq. 1: while confidence "
        ">= --threshold); unset: threshold if --threshold is set, else adaptive",
    )
    threshold: float | None = setting(  # demo drafter-2l: 0.5 drafts almost nothing
        None,
        f"threshold controller: draft while next-token confidence >= this (0..1); "
        f"default {DEFAULT_THRESHOLD}",
    )
    max_draft: int = setting(8, "draft tokens per verification round (1..64)")
    async_drafting: bool = setting(True, "keep drafting while a verification is in flight")
    timeout_floor_ms: float = setting(200.0, "shortest verification timeout, milliseconds")
    timeout_ceiling_ms: float = setting(
        5000.0, "longest verification timeout (and the first), milliseconds"
    )
    timeout_multiplier: float = setting(3.0, "verification timeout = this x round-trip EWMA")
    fallback_after: int = setting(3, "consecutive timeouts before generating locally (fallback)")
    verify_deadline_s: float = setting(
        120.0,
        "fallback: once local generation is complete, wait this long for a verifier to "
        "verify it before finishing with verification_expired, seconds",
    )
    tpot_ms: float | None = setting(
        None,
        "latency objective sent to the verifier, milliseconds per generated token, when "
        "a request names none; unset: the verifier's default",
    )
    centralized_timeout_ms: float = setting(
        30000.0, "centralized mode: longest wait for the next tokens, milliseconds"
    )
    status_wait_ms: float = setting(
        300.0, "wait at start for retained verifier status (fingerprint), milliseconds"
    )

    def __post_init__(self) -> None:
        check_config_id("device", self.device_id)
        NodeConfig.__post_init__(self)
        if self.threads < 1 or self.max_new_tokens < 1 or self.max_prompt_tokens < 1:
            raise ConfigError("threads, max_new_tokens and max_prompt_tokens must be >= 1")
        try:
            self.policy()
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if self.tpot_ms is not None and not 0 < self.tpot_ms < math.inf:
            raise ConfigError(f"tpot_ms must be finite and > 0, got {self.tpot_ms}")

    # -- derived records -------------------------------------------------------------
    @property
    def drafting_controller(self) -> str:
        """``controller``, or its default: threshold when a threshold is set, else adaptive."""
        if self.controller is not None:
            return self.controller
        return "adaptive" if self.threshold is None else "threshold"

    def policy(self) -> PolicyConfig:
        return PolicyConfig(
            threshold=DEFAULT_THRESHOLD if self.threshold is None else self.threshold,
            controller=self.drafting_controller,
            max_draft=self.max_draft,
            async_drafting=self.async_drafting,
            timeout_floor_s=self.timeout_floor_ms / 1000,
            timeout_ceiling_s=self.timeout_ceiling_ms / 1000,
            timeout_multiplier=self.timeout_multiplier,
            fallback_after=self.fallback_after,
            verify_deadline_s=self.verify_deadline_s,
        )

    def mqtt(self) -> MqttConfig:
        return self.broker(f"sled-edge-{self.device_id}")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per field (default None: not given); plus ``--config FILE``."""
    _add_config_arguments(parser, EdgeConfig, "edge node configuration")


def config_from_args(args: argparse.Namespace) -> EdgeConfig:
    return EdgeConfig.from_args(args)
