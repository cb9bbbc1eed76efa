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
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from runtime.config import ConfigError, field_names, load_config
from runtime.config import add_config_arguments as _add_config_arguments
from runtime.config import config_from_args as _config_from_args
from runtime.transport import MqttConfig
from schemas import SchemaError, Topics, check_id

PROTOCOLS: Final = ("5", "3.1.1")
DTYPE_NAMES: Final = ("float32", "bfloat16", "float16")


def doc(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass(frozen=True, slots=True)
class VerifierConfig:
    """Everything a verifier node needs. Units are in the names or the docs."""

    verifier_id: str = field(
        default="verifier-1",
        metadata=doc("verifier id in topics and status (1-64 of A-Z a-z 0-9 _ . -)"),
    )
    broker_url: str = field(
        default="mqtt://127.0.0.1:1883",
        metadata=doc("MQTT broker, mqtt://[user:pass@]host:port or mqtts://host:port (TLS)"),
    )
    username: str | None = field(default=None, metadata=doc("broker user name"))
    password: str | None = field(default=None, metadata=doc("broker password"))
    mqtt_protocol: str = field(
        default="5", metadata=doc("MQTT protocol version: 5 or 3.1.1", choices=PROTOCOLS)
    )
    topic_prefix: str = field(default="sled/v1", metadata=doc("topic prefix"))
    client_id: str | None = field(
        default=None,
        metadata=doc("MQTT client id (persistent session); default sled-verifier-ID"),
    )
    keepalive_s: int = field(
        default=30, metadata=doc("MQTT keepalive, seconds (Last Will after ~1.5x of silence)")
    )
    tls_ca: str | None = field(default=None, metadata=doc("CA file (PEM) for mqtts://"))
    share_group: str | None = field(
        default=None,
        metadata=doc("MQTT v5 shared-subscription group when several verifiers share load"),
    )
    model_dir: str | None = field(
        default=None,
        metadata=doc("target model: a local Hugging Face model directory (no hub access)"),
    )
    dtype: str = field(
        default="float32",
        metadata=doc("target weights and KV dtype (float32 on CPU)", choices=DTYPE_NAMES),
    )
    threads: int = field(default=0, metadata=doc("torch intra-op threads (0: torch default)"))
    max_batch: int = field(default=16, metadata=doc("requests per verification batch, at most"))
    max_wait_ms: float = field(
        default=5.0,
        metadata=doc(
            "longest wait of the oldest queued request before a batch fires, milliseconds "
            "(inf: static batching, wait for max_batch or every active session)"
        ),
    )
    kv_budget_mb: float = field(
        default=1024.0, metadata=doc("KV cache memory budget, MiB (LRU eviction beyond)")
    )
    prefill_chunk: int = field(
        default=512, metadata=doc("longest prompt piece per prefill forward, tokens")
    )
    session_idle_s: float = field(
        default=120.0,
        metadata=doc("forget a session idle this long, seconds (last verdict kept until then)"),
    )
    metrics_port: int = field(default=0, metadata=doc("Prometheus metrics HTTP port (0: off)"))
    metrics_addr: str = field(
        default="0.0.0.0", metadata=doc("address the metrics endpoint listens on")
    )
    log_level: str = field(default="info", metadata=doc("log level: debug, info, warning"))
    log_json: bool = field(default=False, metadata=doc("log JSON lines instead of text"))

    def __post_init__(self) -> None:
        try:
            check_id("verifier", self.verifier_id)
            Topics(self.topic_prefix)
            if self.share_group is not None:
                check_id("share group", self.share_group)
        except SchemaError as exc:
            raise ConfigError(str(exc)) from exc
        if self.mqtt_protocol not in PROTOCOLS:
            raise ConfigError(f"mqtt_protocol must be 5 or 3.1.1, got {self.mqtt_protocol!r}")
        if self.dtype not in DTYPE_NAMES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPE_NAMES)}, got {self.dtype!r}")
        if self.max_batch < 1 or self.prefill_chunk < 1 or self.keepalive_s < 1:
            raise ConfigError("max_batch, prefill_chunk and keepalive_s must be >= 1")
        if self.threads < 0 or self.metrics_port < 0:
            raise ConfigError("threads and metrics_port must be >= 0")
        if not self.max_wait_ms >= 0:
            raise ConfigError(f"max_wait_ms must be >= 0 or inf, got {self.max_wait_ms}")
        if not self.kv_budget_mb > 0 or not self.session_idle_s > 0:
            raise ConfigError("kv_budget_mb and session_idle_s must be > 0")

    # -- derived values ---------------------------------------------------------------
    @property
    def batch_wait_ms(self) -> float | None:
        """``max_wait_ms`` for the batcher: None means static batching."""
        return None if math.isinf(self.max_wait_ms) else self.max_wait_ms

    @property
    def kv_budget_bytes(self) -> int:
        return int(self.kv_budget_mb * 1024 * 1024)

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    def mqtt(self) -> MqttConfig:
        return MqttConfig.from_url(
            self.broker_url,
            username=self.username,
            password=self.password,
            client_id=self.client_id or f"sled-verifier-{self.verifier_id}",
            protocol=self.mqtt_protocol,
            keepalive_s=self.keepalive_s,
            tls_ca=self.tls_ca,
            # In a $share group a persistent session outlives a dead verifier, and the broker
            # keeps handing it its share of the drafts, queued for nobody. Without a group
            # the session persists, so drafts queue while the verifier restarts.
            persistent=self.share_group is None,
        )

    def with_(self, **changes: Any) -> VerifierConfig:
        return dataclasses.replace(self, **changes)

    # -- loading ----------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        flags: Mapping[str, Any] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        toml_path: Path | str | None = None,
    ) -> VerifierConfig:
        """Merge defaults < TOML < env < flags (``None`` flags count as not given)."""
        return load_config(cls, flags, env=env, toml_path=toml_path, table="verifier")


FIELD_NAMES: Final = field_names(VerifierConfig)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per field (default None: not given); plus ``--config FILE``."""
    _add_config_arguments(parser, VerifierConfig, "verifier configuration")


def config_from_args(args: argparse.Namespace) -> VerifierConfig:
    return _config_from_args(VerifierConfig, args, "verifier")
