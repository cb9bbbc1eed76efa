"""The demo's embedded broker: Mosquitto from PATH, else amqtt in-process (MQTT 3.1.1)."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from runtime.transport import Message, MqttConfig, MqttTransport, Will
from sled.demo.broker import choose_kind, embedded_broker


def path_without_mosquitto() -> str:
    dirs = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(d for d in dirs if not (Path(d) / "mosquitto").exists())


def test_auto_picks_amqtt_when_mosquitto_is_not_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", path_without_mosquitto())
    assert choose_kind("auto") == "amqtt"
    assert choose_kind("mosquitto") == "mosquitto"
    with pytest.raises(ValueError):
        choose_kind("emqx")


def test_auto_picks_mosquitto_from_path() -> None:
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not on PATH")
    assert choose_kind("auto") == "mosquitto"


async def test_amqtt_carries_retained_status_will_and_qos1() -> None:
    async with embedded_broker("amqtt") as broker:
        assert broker.kind == "amqtt" and broker.protocol == "3.1.1"
        cfg = MqttConfig.from_url(broker.url, protocol="3.1.1", connect_timeout_s=5)
        status = Message("t/dev/a/status", b"online", retain=True)
        async with MqttTransport(
            cfg.with_(client_id="dev-a"), will=Will("t/dev/a/status", b"offline"), birth=status
        ):
            pass  # a clean exit: no Will, the retained birth stays
        async with MqttTransport(cfg.with_(client_id="app", persistent=False)) as app:
            await app.subscribe("t/#")
            first = await asyncio.wait_for(anext(app.messages()), 5)
            assert (first.topic, first.payload, first.retain) == ("t/dev/a/status", b"online", True)
            await app.publish("t/dev/a/out/r1", b"chunk", qos=1)
            got = await asyncio.wait_for(anext(app.messages()), 5)
            assert got.payload == b"chunk"
