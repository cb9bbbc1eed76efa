"""The broker connection both nodes share: one config record and its ``MqttConfig``.

Each node's config record (``edge_node.config.EdgeConfig``,
``verifier_node.config.VerifierConfig``) is built on :class:`BrokerConfig`, so the broker
fields are the same flags (``--broker-url``), ``SLED_*`` variables (``SLED_BROKER_URL``)
and TOML keys (``broker_url``) on both nodes, with the same defaults and checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from runtime.config import ConfigError, setting
from schemas import SchemaError, Topics

if TYPE_CHECKING:
    from runtime.transport import MqttConfig

PROTOCOLS: Final = ("5", "3.1.1")


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """Where the broker is and how to log in. Times carry their unit in the name."""

    broker_url: str = setting(
        "mqtt://127.0.0.1:1883",
        "MQTT broker, mqtt://[user:pass@]host:port or mqtts://host:port (TLS)",
    )
    username: str | None = setting(None, "broker user name")
    password: str | None = setting(None, "broker password")
    mqtt_protocol: str = setting("5", "MQTT protocol version: 5 or 3.1.1", choices=PROTOCOLS)
    topic_prefix: str = setting("sled/v1", "topic prefix")
    client_id: str | None = setting(
        None,
        "MQTT client id, stable for a persistent session; "
        "default sled-edge-DEVICE or sled-verifier-ID",
    )
    keepalive_s: int = setting(30, "MQTT keepalive, seconds (Last Will after ~1.5x of silence)")
    tls_ca: str | None = setting(None, "CA file (PEM) for mqtts://")

    def __post_init__(self) -> None:
        try:
            Topics(self.topic_prefix)
        except SchemaError as exc:
            raise ConfigError(str(exc)) from exc
        if self.mqtt_protocol not in PROTOCOLS:
            raise ConfigError(f"mqtt_protocol must be 5 or 3.1.1, got {self.mqtt_protocol!r}")
        if self.keepalive_s < 1:
            raise ConfigError(f"keepalive_s must be >= 1, got {self.keepalive_s}")

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    def broker(self, default_client_id: str, *, persistent: bool = True) -> MqttConfig:
        """The transport's ``MqttConfig``; ``client_id`` falls back to ``default_client_id``.

        ``runtime.transport`` is imported here: aiomqtt is needed to connect, not to
        read a config (``--help`` stays light).
        """
        from runtime.transport import MqttConfig

        return MqttConfig.from_url(
            self.broker_url,
            username=self.username,
            password=self.password,
            client_id=self.client_id or default_client_id,
            protocol=self.mqtt_protocol,
            keepalive_s=self.keepalive_s,
            tls_ca=self.tls_ca,
            persistent=persistent,
        )
