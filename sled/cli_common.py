"""Broker flags shared by every command that talks MQTT."""

from __future__ import annotations

import argparse
import os

from schemas import DEFAULT_PREFIX
from sled.transport import MqttConfig


def add_broker_arguments(parser: argparse.ArgumentParser) -> None:
    """The same broker flags and ``SLED_*`` variables as ``sled edge`` / ``sled verifier``."""
    env = os.environ.get
    g = parser.add_argument_group("broker")
    g.add_argument(
        "--broker-url",
        "--broker",
        dest="broker",
        default=env("SLED_BROKER_URL", env("SLED_BROKER", "mqtt://127.0.0.1:1883")),
        help="broker URL, mqtt://[user:pass@]host:port or mqtts:// (env SLED_BROKER_URL)",
    )
    g.add_argument("--username", default=env("SLED_USERNAME"), help="(env SLED_USERNAME)")
    g.add_argument("--password", default=env("SLED_PASSWORD"), help="(env SLED_PASSWORD)")
    g.add_argument(
        "--mqtt-protocol",
        "--protocol",
        dest="protocol",
        choices=("5", "3.1.1"),
        default=env("SLED_MQTT_PROTOCOL", "5"),
        help="MQTT protocol version (env SLED_MQTT_PROTOCOL)",
    )
    g.add_argument(
        "--topic-prefix",
        "--prefix",
        dest="prefix",
        default=env("SLED_TOPIC_PREFIX", DEFAULT_PREFIX),
        help=f"topic prefix (default {DEFAULT_PREFIX}; env SLED_TOPIC_PREFIX)",
    )
    g.add_argument(
        "--tls-ca", default=env("SLED_TLS_CA"), help="CA file for mqtts:// (env SLED_TLS_CA)"
    )


def mqtt_config(args: argparse.Namespace, **overrides: object) -> MqttConfig:
    return MqttConfig.from_url(
        args.broker,
        username=args.username,
        password=args.password,
        protocol=args.protocol,
        tls_ca=args.tls_ca,
        **overrides,
    )
