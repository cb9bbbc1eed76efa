"""The verifier node's one config record, from CLI flags, ``SLED_*`` env vars and TOML.

Precedence, highest first: command-line flag, environment variable, TOML file, default.

* flag ``--max-batch 8``             (every field; ``--no-log-json`` style for booleans)
* env  ``SLED_MAX_BATCH=8``          (``SLED_`` + the field name in upper case)
* TOML ``max_batch = 8``             (top level or under ``[verifier]``; file from
  ``--config`` or ``SLED_CONFIG``)

Each field documents its unit; ``sled verifier --help`` lists them all.
"""

from __future__ import annotations

import argparse
import math
import re
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Final

from runtime.config import ConfigError, NodeConfig, check_config_id, setting
from runtime.config import add_config_arguments as _add_config_arguments
from verifier_node.quotas import Quotas

if TYPE_CHECKING:
    from runtime.transport import MqttConfig

DTYPE_NAMES: Final = ("auto", "float32", "bfloat16", "float16")
QUOTA_FIELDS: Final = (
    "device_sessions",
    "device_queued",
    "device_context_tokens",
    "device_central_sessions",
    "device_central_new_tokens",
    "device_error_backlog",
)  # counts, each >= 1


@dataclass(frozen=True, slots=True)
class VerifierConfig(NodeConfig):
    """Everything a verifier node needs: :class:`~runtime.config.NodeConfig` (the broker
    connection, logging), then these. Units are in the names or the docs."""

    TABLE: ClassVar[str] = "verifier"

    verifier_id: str = setting(
        "verifier-1",
        "verifier id in topics and status (1-64 of A-Z a-z 0-9 _ . -); auto: the host name "
        "(one id per replica, e.g. docker compose --scale)",
    )
    share_group: str | None = setting(
        None,
        "MQTT v5 shared-subscription group: read the plain draft topic round robin with the "
        "group instead of the drafts devices assign to this verifier (docs/protocol.md)",
    )
    capacity: float = setting(
        1.0, "weight in the devices' choice of verifier, relative to the others' (> 0)"
    )
    status_every_s: float = setting(
        10.0, "re-announce the retained status with the current load this often, seconds"
    )
    model_dir: str | None = setting(
        None, "target model: a local Hugging Face model directory (no hub access)"
    )
    dtype: str = setting(
        "float32",
        "target weights and KV dtype; auto: bfloat16 on CUDA and on CPUs with AMX or "
        "AVX-512 BF16, else float32 (only float32 is token-exact: see the README)",
        choices=DTYPE_NAMES,
    )
    device: str = setting("auto", "target device: auto (CUDA when present), cpu, cuda, cuda:N")
    device_map: str | None = setting(
        None, "auto: spread a target too large for one GPU over every GPU (needs accelerate)"
    )
    threads: int = setting(0, "torch intra-op threads (0: torch default)")
    max_batch: int = setting(16, "requests per verification batch, at most")
    max_wait_ms: float = setting(
        5.0,
        "longest wait of the oldest queued request before a batch fires, milliseconds "
        "(inf: static batching, wait for max_batch or every active session)",
    )
    kv_budget_mb: float = setting(1024.0, "KV cache memory budget, MiB (LRU eviction beyond)")
    prefill_chunk: int = setting(512, "longest prompt piece per prefill forward, tokens")
    session_idle_s: float = setting(
        120.0, "forget a session idle this long, seconds (last verdict kept until then)"
    )
    metrics_port: int = setting(0, "Prometheus metrics HTTP port (0: off)")
    metrics_addr: str = setting("0.0.0.0", "address the metrics endpoint listens on")
    # -- per-device quotas (verifier_node/quotas.py); a device is the id in its topics --
    device_sessions: int = setting(
        16, "live sessions per device, SLED + centralized (more: over_quota verdict)"
    )
    device_queued: int = setting(16, "requests per device waiting for a batch, at most")
    device_context_tokens: int = setting(
        65536, "committed tokens over one device's live sessions, at most (tokens)"
    )
    device_central_sessions: int = setting(4, "live centralized sessions per device, at most")
    device_central_new_tokens: int = setting(
        2048, "max_new_tokens of one centralized request, at most (tokens)"
    )
    device_kv_share: float = setting(
        0.5,
        "fraction of kv_budget_mb one device's sessions may keep cached, in (0, 1]; beyond "
        "it the device's own least recently used sessions leave the cache first",
    )
    device_error_backlog: int = setting(
        32,
        "error verdicts per device being published at once, at most; more are shed "
        "(dropped, counted as 'shed', logged) so a flood cannot fill the MQTT queues",
    )

    def __post_init__(self) -> None:
        if self.verifier_id == "auto":
            object.__setattr__(self, "verifier_id", host_id())
        check_config_id("verifier", self.verifier_id)
        if not (0 < self.capacity < math.inf and 0 < self.status_every_s < math.inf):
            raise ConfigError("capacity and status_every_s must be > 0 and finite")
        if self.share_group is not None:
            check_config_id("share group", self.share_group)
        NodeConfig.__post_init__(self)
        if self.max_batch < 1 or self.prefill_chunk < 1:
            raise ConfigError("max_batch and prefill_chunk must be >= 1")
        if self.device != "auto" and not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.device_map not in (None, "auto"):
            raise ConfigError(f"device_map must be auto when set, got {self.device_map!r}")
        if self.threads < 0 or self.metrics_port < 0:
            raise ConfigError("threads and metrics_port must be >= 0")
        if not self.max_wait_ms >= 0:
            raise ConfigError(f"max_wait_ms must be >= 0 or inf, got {self.max_wait_ms}")
        if not self.kv_budget_mb > 0 or not self.session_idle_s > 0:
            raise ConfigError("kv_budget_mb and session_idle_s must be > 0")
        for name in QUOTA_FIELDS:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.device_kv_share <= 1:
            raise ConfigError(f"device_kv_share must be in (0, 1], got {self.device_kv_share}")

    # -- derived values ---------------------------------------------------------------
    @property
    def batch_wait_ms(self) -> float | None:
        """``max_wait_ms`` for the batcher: None means static batching."""
        return None if math.isinf(self.max_wait_ms) else self.max_wait_ms

    @property
    def kv_budget_bytes(self) -> int:
        return int(self.kv_budget_mb * 1024 * 1024)

    def quotas(self) -> Quotas:
        """The per-device quotas of the ``device_*`` fields."""
        return Quotas(
            sessions=self.device_sessions,
            queued=self.device_queued,
            context_tokens=self.device_context_tokens,
            central_sessions=self.device_central_sessions,
            central_new_tokens=self.device_central_new_tokens,
        )

    def mqtt(self) -> MqttConfig:
        return self.broker(
            f"sled-verifier-{self.verifier_id}",
            # In a $share group a persistent session outlives a dead verifier, and the broker
            # keeps handing it its share of the drafts, queued for nobody. Without a group
            # the session persists, so drafts queue while the verifier restarts.
            persistent=self.share_group is None,
        )


def host_id() -> str:
    """The host name as a verifier id (a container's is its unique short id)."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "-", socket.gethostname())[:64] or "verifier"


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per field (default None: not given); plus ``--config FILE``."""
    _add_config_arguments(parser, VerifierConfig, "verifier configuration")


def config_from_args(args: argparse.Namespace) -> VerifierConfig:
    return VerifierConfig.from_args(args)
