"""The demo's embedded MQTT broker: Mosquitto when installed, else amqtt in this process.

    async with embedded_broker() as broker:
        print(broker.url, broker.protocol)     # mqtt://127.0.0.1:41233, "5" or "3.1.1"

* ``mosquitto`` on ``PATH`` (``shutil.which``): a private :class:`runtime.mosquitto.Mosquitto`
  on a free loopback port; clients speak MQTT 5.
* otherwise amqtt (pure Python, MQTT 3.1.1 only) runs inside the caller's event loop on
  a free loopback port, anonymous, no persistence; every client must then use protocol
  ``3.1.1``.

Only ``PATH`` is consulted (not ``/usr/sbin`` directly), so a caller can force amqtt by
leaving Mosquitto off ``PATH``, or ask for one with ``kind`` (``mosquitto`` then also
finds ``/usr/sbin/mosquitto``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from runtime.mosquitto import Mosquitto, MosquittoNotFound, free_port, mosquitto_binary

BrokerKind = Literal["mosquitto", "amqtt", "external"]
KINDS: tuple[str, ...] = ("auto", "mosquitto", "amqtt")
HOST = "127.0.0.1"
SHUTDOWN_TIMEOUT_S = 5.0  # amqtt shutdown, at most (seconds)


class BrokerStartError(RuntimeError):
    """The embedded broker could not be started (no Mosquitto and no amqtt, or a failure)."""


@dataclass(frozen=True, slots=True)
class BrokerInfo:
    """Where the embedded broker listens and which MQTT version its clients must speak."""

    kind: BrokerKind
    url: str
    protocol: Literal["5", "3.1.1"]


def choose_kind(kind: str = "auto") -> Literal["mosquitto", "amqtt"]:
    """``auto``: Mosquitto if a ``mosquitto`` binary is on ``PATH``, else amqtt."""
    if kind not in KINDS:
        raise ValueError(f"broker kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "auto":
        return "mosquitto" if shutil.which("mosquitto") else "amqtt"
    return "mosquitto" if kind == "mosquitto" else "amqtt"


@contextlib.asynccontextmanager
async def embedded_broker(kind: str = "auto") -> AsyncIterator[BrokerInfo]:
    """Run a private broker on a free loopback port for the lifetime of the block."""
    chosen = choose_kind(kind)
    if chosen == "mosquitto":
        try:
            mosquitto_binary()  # PATH, then /usr/sbin (an explicit request may use either)
        except MosquittoNotFound as exc:
            raise BrokerStartError(str(exc)) from exc
        with contextlib.ExitStack() as stack:
            try:
                broker = stack.enter_context(Mosquitto.start(host=HOST))
            except RuntimeError as exc:
                raise BrokerStartError(f"mosquitto did not start: {exc}") from exc
            yield BrokerInfo("mosquitto", broker.url, "5")
        return
    async with _amqtt_broker() as url:
        yield BrokerInfo("amqtt", url, "3.1.1")


@contextlib.asynccontextmanager
async def _amqtt_broker() -> AsyncIterator[str]:
    try:
        from amqtt.broker import Broker
    except ImportError as exc:
        raise BrokerStartError(
            "no broker: install mosquitto (apt-get install mosquitto) or amqtt "
            "(pip install amqtt), or pass --broker URL"
        ) from exc
    # amqtt logs every connection at INFO and tracebacks of clients that vanish at WARNING.
    logging.getLogger("amqtt").setLevel(logging.ERROR)
    logging.getLogger("transitions").setLevel(logging.ERROR)
    port = free_port(HOST)
    config: dict[str, Any] = {
        "listeners": {"default": {"type": "tcp", "bind": f"{HOST}:{port}"}},
        "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
        },
    }
    broker = Broker(config)
    try:
        await broker.start()
    except Exception as exc:
        raise BrokerStartError(f"amqtt did not start on {HOST}:{port}: {exc}") from exc
    try:
        yield f"mqtt://{HOST}:{port}"
    finally:
        try:
            await asyncio.wait_for(broker.shutdown(), SHUTDOWN_TIMEOUT_S)
        except TimeoutError:
            logging.getLogger("sled.demo").warning("amqtt did not shut down in time")
