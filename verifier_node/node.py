"""What the verifier announces and loads: its target, fingerprint and retained status.

* :func:`load_target` loads the target model named by the config (blocking).
* :func:`runtime.models.tokenizer_fingerprint_of` is the target tokenizer's fingerprint,
  checked against each device's drafter.
* :func:`status_record` is the retained :class:`~schemas.VerifierStatus`;
  :func:`make_mqtt_transport` connects with it online as the birth message and
  offline as the Last Will.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final

from runtime.transport import Message, MqttTransport, Will
from schemas import VerifierStatus, encode
from verifier_node.announce import capacity_of
from verifier_node.config import VerifierConfig

if TYPE_CHECKING:
    from verifier_node.runner import TargetRunner

# Config fields that are TargetRunner.load options of the same name.
RUNNER_OPTIONS: Final = (
    "dtype",
    "device",
    "device_map",
    "threads",
    "kv_budget_bytes",
    "prefill_chunk",
)


def load_target(config: VerifierConfig) -> TargetRunner:
    """The target runner of ``config.model_dir`` (blocking: run it in a thread)."""
    from verifier_node.runner import TargetRunner

    if not config.model_dir:
        raise ValueError("no target model: set --model-dir (or SLED_MODEL_DIR)")
    options = {name: getattr(config, name) for name in RUNNER_OPTIONS}
    return TargetRunner.load(config.model_dir, **options)


def status_record(
    config: VerifierConfig,
    *,
    online: bool,
    model: str = "",
    fingerprint: str | None = None,
    vocab_size: int = 0,
    load: int = 0,
    started_at_ns: int = 0,
) -> VerifierStatus:
    return VerifierStatus(
        verifier=config.verifier_id,
        online=online,
        model=model,
        fingerprint=fingerprint or "",
        vocab_size=vocab_size,
        max_batch=config.max_batch,
        capacity=capacity_of(config),
        load=load,
        started_at_ns=started_at_ns,
        sent_at_ns=time.time_ns(),
    )


def make_mqtt_transport(
    config: VerifierConfig, online: VerifierStatus, offline: VerifierStatus
) -> MqttTransport:
    """The MQTT transport with the retained online status as birth and offline as Will."""
    topic = config.topics.verifier_status(config.verifier_id)
    return MqttTransport(
        config.mqtt(),
        will=Will(topic, encode(offline), retain=True),
        birth=Message(topic, encode(online), retain=True),
    )
