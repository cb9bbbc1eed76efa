"""Message transport: one interface, an MQTT implementation and an in-memory one.

    async with MqttTransport(MqttConfig.from_url("mqtt://127.0.0.1:1883")) as bus:
        await bus.subscribe("sled/v1/dev/pi-1/verdict")
        await bus.publish("sled/v1/dev/pi-1/draft", payload)
        async for msg in bus.messages():
            ...

Errors (``runtime.transport.base``)::

    TransportError            the broker could not be reached or refused an operation
    └── TransportTimeout      an operation did not finish within its timeout
"""

from runtime.transport.base import (
    Message,
    Transport,
    TransportError,
    TransportTimeout,
    Will,
    topic_matches,
)
from runtime.transport.memory import MemoryBroker, MemoryTransport
from runtime.transport.mqtt import MqttConfig, MqttTransport

__all__ = [
    "MemoryBroker",
    "MemoryTransport",
    "Message",
    "MqttConfig",
    "MqttTransport",
    "Transport",
    "TransportError",
    "TransportTimeout",
    "Will",
    "topic_matches",
]
