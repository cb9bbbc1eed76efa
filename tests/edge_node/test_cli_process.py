"""``sled edge`` as a real process: serves the req topic, Last Will when killed."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from runtime.mosquitto import Mosquitto
from runtime.transport import MqttConfig, MqttTransport
from schemas import DeviceStatus, GenerateRequest, ResultFinal, Topics, decode, encode
from tests.edge_node.conftest import TinyDrafter

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]


async def next_status(app: MqttTransport, online: bool) -> DeviceStatus:
    async for msg in app.messages():
        rec = decode(msg.payload)
        if isinstance(rec, DeviceStatus) and rec.online == online:
            return rec
    raise AssertionError("unreachable")


async def test_edge_process_serves_and_leaves_a_last_will(
    llama_drafter: TinyDrafter, broker: Mosquitto, mqtt_config: MqttConfig, topics: Topics
) -> None:
    device = "proc-1"
    cmd = [
        sys.executable, "-m", "sled.cli", "edge",
        "--drafter-dir", str(llama_drafter.onnx_dir),
        "--broker-url", broker.url,
        "--device-id", device,
        "--topic-prefix", topics.prefix,
        "--log-level", "warning",
    ]  # fmt: skip
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, env=env)
    try:
        async with MqttTransport(mqtt_config) as app:
            await app.subscribe(topics.device_status(device))
            await app.subscribe(topics.all_out(device))
            status = await asyncio.wait_for(next_status(app, online=True), 30)
            assert status.fingerprint and "local" in status.modes
            final: ResultFinal | None = None
            for attempt in range(5):  # the req subscription follows the birth status closely
                await asyncio.sleep(0.2)
                req = GenerateRequest(
                    request=f"r{attempt}", prompt="In the beginning", max_new_tokens=5, mode="local"
                )
                await app.publish(topics.req(device), encode(req))
                try:
                    async with asyncio.timeout(2):
                        async for msg in app.messages():
                            rec = decode(msg.payload)
                            if isinstance(rec, ResultFinal):
                                final = rec
                                break
                except TimeoutError:
                    continue
                break
            assert final is not None and final.mode == "local" and len(final.tokens) == 5
            proc.send_signal(signal.SIGKILL)  # vanish without a goodbye
            await asyncio.wait_for(proc.wait(), 10)
            gone = await asyncio.wait_for(next_status(app, online=False), 10)
            assert gone.device == device
    finally:
        if proc.returncode is None:
            proc.kill()
            await asyncio.wait_for(proc.wait(), 10)
