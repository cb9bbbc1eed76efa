"""End to end on a real Mosquitto: scripted devices against the verifier service."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest

from runtime.mosquitto import Mosquitto, free_port
from runtime.transport import MqttConfig, MqttTransport
from schemas import DraftRequest, ErrorCode, Topics, Verdict, VerifierStatus, decode, encode
from tests.verifier_node.helpers import greedy_truth, random_prompts, running_verifier
from tests.verifier_node.scripted import ScriptedDevice
from verifier_node.config import VerifierConfig
from verifier_node.node import make_mqtt_transport

pytestmark = pytest.mark.integration

VOCAB = 400
MAX_NEW = 24


@pytest.fixture(scope="module")
def cases(llama_dir: Path) -> tuple[list[list[int]], list[list[int]]]:
    prompts = random_prompts(24, VOCAB, seed=11)
    return prompts, greedy_truth(llama_dir, prompts, MAX_NEW)


def verifier_config(broker: Mosquitto, topics: Topics, **kw) -> VerifierConfig:
    base = {
        "verifier_id": f"v-{uuid.uuid4().hex[:8]}",
        "broker_url": broker.url,
        "topic_prefix": topics.prefix,
        "max_batch": 8,
        "max_wait_ms": 3.0,
    }
    return VerifierConfig(**{**base, **kw})


def mqtt_factory(config: VerifierConfig, online: VerifierStatus, offline: VerifierStatus):
    transport = make_mqtt_transport(config, online, offline)
    transport._config = transport._config.with_(connect_timeout_s=5, op_timeout_s=5)
    return transport


async def start_devices(
    mqtt_config: MqttConfig, topics: Topics, n: int, fingerprint: str | None, **kw
) -> list[ScriptedDevice]:
    devices = []
    for i in range(n):
        t = MqttTransport(mqtt_config.with_(client_id=f"dev-{uuid.uuid4().hex[:8]}"))
        await t.__aenter__()
        d = ScriptedDevice(t, topics, f"pi-{i}", vocab=VOCAB, fingerprint=fingerprint, seed=i, **kw)
        await d.start()
        devices.append(d)
    return devices


async def stop_devices(devices: list[ScriptedDevice]) -> None:
    for d in devices:
        await d.stop()
        await d.transport.__aexit__(None, None, None)


async def run_prompts(
    devices: list[ScriptedDevice], prompts: list[list[int]], truth: list[list[int]]
) -> list[list[int]]:
    """Each device runs its share of the prompts one after another; all concurrently."""
    out: list[list[int]] = [[] for _ in prompts]

    async def one_device(d: int) -> None:
        for i in range(d, len(prompts), len(devices)):
            out[i] = await devices[d].generate(prompts[i], truth[i], MAX_NEW)

    await asyncio.gather(*(one_device(d) for d in range(len(devices))))
    return out


async def test_greedy_is_token_exact_with_many_devices(
    broker: Mosquitto, topics: Topics, mqtt_config: MqttConfig, llama_dir: Path, cases
) -> None:
    prompts, truth = cases
    cfg = verifier_config(broker, topics)
    async with running_verifier(cfg, llama_dir, mqtt_factory) as service:
        devices = await start_devices(mqtt_config, topics, 4, service.fingerprint)
        try:
            out = await asyncio.wait_for(run_prompts(devices, prompts, truth), 120)
        finally:
            await stop_devices(devices)
        batch_count = service.metrics.value("sled_verifier_batch_size_count")
        batch_sum = service.metrics.value("sled_verifier_batch_size_sum")
    assert out == truth  # 24 prompts, token for token
    assert sum(d.stats.accepted for d in devices) > 0
    assert batch_sum / batch_count > 1.0  # devices really shared forwards


async def test_duplicate_delivery_is_verified_once(
    broker: Mosquitto, topics: Topics, mqtt_config: MqttConfig, llama_dir: Path, cases
) -> None:
    prompts, truth = cases
    cfg = verifier_config(broker, topics)
    async with running_verifier(cfg, llama_dir, mqtt_factory) as service:
        devices = await start_devices(
            mqtt_config, topics, 2, service.fingerprint, duplicate=True, redeliver=True
        )
        try:
            out = await asyncio.wait_for(run_prompts(devices, prompts[:4], truth[:4]), 60)
            await asyncio.sleep(0.2)  # the last redeliveries
        finally:
            await stop_devices(devices)
        rows = service.engine.rows_verified
        replies = service.metrics.value("sled_verifier_requests_total", outcome="duplicate")
        in_flight = service.metrics.value("sled_verifier_requests_total", outcome="in_flight")
    assert out == truth[:4]
    requests = sum(d.stats.requests for d in devices)
    assert sum(d.stats.timeouts for d in devices) == 0
    assert rows == requests  # every (session, seq) verified exactly once
    assert replies >= requests - 2  # the redeliveries got the stored verdict
    assert in_flight + replies >= 2 * requests - 2  # and the back-to-back copies too
    assert sum(d.stats.duplicate_verdicts for d in devices) > 0


async def test_verifier_restart_mid_generation_resyncs(
    broker: Mosquitto, topics: Topics, mqtt_config: MqttConfig, llama_dir: Path, cases
) -> None:
    prompts, truth = cases
    cfg = verifier_config(broker, topics)
    devices = await start_devices(mqtt_config, topics, 3, None, timeout_s=1.0)
    try:
        async with running_verifier(cfg, llama_dir, mqtt_factory) as first:
            for d in devices:
                d.fingerprint = first.fingerprint
            work = asyncio.create_task(run_prompts(devices, prompts[:6], truth[:6]))
            while first.batches < 8:  # mid-generation  # noqa: ASYNC110
                await asyncio.sleep(0.005)
        # The first verifier is gone (its state with it); requests queue at the broker.
        await asyncio.sleep(0.3)
        async with running_verifier(cfg, llama_dir, mqtt_factory):
            out = await asyncio.wait_for(work, 90)
    finally:
        await stop_devices(devices)
    assert out == truth[:6]
    assert sum(d.stats.resyncs for d in devices) >= 1


async def test_bad_input_gets_an_error_verdict_while_others_continue(
    broker: Mosquitto, topics: Topics, mqtt_config: MqttConfig, llama_dir: Path, cases
) -> None:
    prompts, truth = cases
    cfg = verifier_config(broker, topics)
    async with running_verifier(cfg, llama_dir, mqtt_factory) as service:
        devices = await start_devices(mqtt_config, topics, 2, service.fingerprint)
        bad = MqttTransport(mqtt_config.with_(client_id=f"bad-{uuid.uuid4().hex[:8]}"))
        async with bad:
            await bad.subscribe(topics.verdict("evil"))
            work = asyncio.create_task(run_prompts(devices, prompts[:4], truth[:4]))
            oov = DraftRequest(
                session="e2",
                seq=1,
                start=1,
                draft=[10**6],
                context=[5],
                prompt_len=1,
                max_new_tokens=3,
            )
            for payload in (b"\x00\x01junk", encode(oov), b"{not json"):
                await bad.publish(topics.draft("evil"), payload)
            got = []
            async for msg in bad.messages():
                got.append(decode(msg.payload, expect=Verdict))
                if len(got) == 3:
                    break
            out = await asyncio.wait_for(work, 60)
        await stop_devices(devices)
    assert out == truth[:4]
    assert sorted(v.code for v in got) == sorted(
        [ErrorCode.MALFORMED, ErrorCode.OUT_OF_VOCAB, ErrorCode.MALFORMED]
    )
    assert any(v.session == "e2" and v.seq == 1 and "outside vocabulary" in v.message for v in got)


async def test_centralized_mode_streams_the_target_output(
    broker: Mosquitto, topics: Topics, mqtt_config: MqttConfig, llama_dir: Path, cases
) -> None:
    prompts, truth = cases
    cfg = verifier_config(broker, topics, max_batch=4)
    async with running_verifier(cfg, llama_dir, mqtt_factory) as service:
        devices = await start_devices(mqtt_config, topics, 3, service.fingerprint)
        try:
            out = await asyncio.wait_for(
                asyncio.gather(
                    *(d.centralized(prompts[i], MAX_NEW) for i, d in enumerate(devices))
                ),
                60,
            )
        finally:
            await stop_devices(devices)
        batch_sum = service.metrics.value("sled_verifier_batch_size_sum")
        batch_count = service.metrics.value("sled_verifier_batch_size_count")
    assert list(out) == truth[:3]
    assert batch_sum / batch_count > 1.0  # continuous batching shared the forwards


async def test_sled_verifier_command_serves_and_stops_cleanly(
    broker: Mosquitto, topics: Topics, mqtt_config: MqttConfig, llama_dir: Path
) -> None:
    """``sled verifier`` as a process: retained status, a verdict, metrics, clean SIGTERM."""
    verifier_id = f"cli-{uuid.uuid4().hex[:8]}"
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sled.cli",
        "verifier",
        "--model-dir",
        str(llama_dir),
        "--broker-url",
        broker.url,
        "--topic-prefix",
        topics.prefix,
        "--verifier-id",
        verifier_id,
        "--threads",
        "1",
        "--metrics-port",
        str(port),
        "--metrics-addr",
        "127.0.0.1",
        "--log-json",
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with MqttTransport(mqtt_config.with_(client_id=f"t-{verifier_id}")) as t:
            await t.subscribe(topics.verifier_status(verifier_id))
            await t.subscribe(topics.verdict("cli-dev"))
            inbox = t.messages()

            async def next_record():
                msg = await asyncio.wait_for(anext(inbox), 60)
                return decode(msg.payload, expect=(VerifierStatus, Verdict))

            status = await next_record()
            assert isinstance(status, VerifierStatus) and status.online
            req = DraftRequest(
                session="c1",
                seq=0,
                start=3,
                draft=[4],
                context=[1, 2, 3],
                prompt_len=3,
                max_new_tokens=5,
                fingerprint=status.fingerprint,
            )
            verdict: VerifierStatus | Verdict | None = None
            for _ in range(20):  # resend until answered, like a device (QoS 1 is idempotent)
                await t.publish(topics.draft("cli-dev"), encode(req))
                with contextlib.suppress(TimeoutError):
                    while not isinstance(verdict, Verdict):
                        verdict = decode(
                            (await asyncio.wait_for(anext(inbox), 2)).payload,
                            expect=(VerifierStatus, Verdict),
                        )
                if isinstance(verdict, Verdict):
                    break
            assert isinstance(verdict, Verdict) and verdict.ok and verdict.committed >= 4
            url = f"http://127.0.0.1:{port}/metrics"
            body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
            assert b"sled_verifier_round_seconds" in body
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
            status = await next_record()
            while isinstance(status, Verdict) or status.online:  # duplicates, online again
                status = await next_record()
            assert isinstance(status, VerifierStatus) and not status.online
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    stderr = (await proc.stderr.read()).decode() if proc.stderr else ""
    assert "verifier.ready" in stderr


async def test_deadline_scheduler_is_token_exact_and_measured(
    broker: Mosquitto, topics: Topics, mqtt_config: MqttConfig, llama_dir: Path, cases
) -> None:
    """The deadline scheduler, its estimator calibrated at start-up, with devices of
    different objectives (one hopelessly tight): token-exact output; SLO attainment, the
    estimator's error and the batch decisions are metrics; verdicts carry the load."""
    prompts, truth = cases
    cfg = verifier_config(broker, topics, scheduler="deadline", tpot_ms=50.0, calibrate=True)
    async with running_verifier(cfg, llama_dir, mqtt_factory) as service:
        devices = await start_devices(mqtt_config, topics, 4, service.fingerprint)
        devices[0].tpot_ms = 0.01  # always late: must not starve the others
        devices[1].tpot_ms = 2000.0
        try:
            out = await asyncio.wait_for(run_prompts(devices, prompts[:12], truth[:12]), 120)
        finally:
            await stop_devices(devices)
        value = service.metrics.value
        verified = value("sled_verifier_requests_total", outcome="verified")
        answered = sum(value("sled_verifier_slo_requests_total", met=m) for m in ("yes", "no"))
        sessions = sum(value("sled_verifier_slo_sessions_total", met=m) for m in ("yes", "no"))
        late = value("sled_verifier_slo_sessions_total", met="no")
        reasons = ("full", "all_waiting", "deadline", "max_wait", "forced")
        fired = sum(value("sled_verifier_batch_fired_total", reason=r) for r in reasons)
        mape = value("sled_verifier_estimator_mape", target=service.pacer.target)
        calibration_rounds = service.pacer.estimator.rounds - service.batches
    assert out == truth[:12]  # 12 prompts, token for token
    assert answered == verified > 0  # every verdict was checked against its deadline
    assert sessions == 12 and late >= 3  # the 0.01 ms/token device missed every time
    assert fired == service.batches  # every batch says why it fired
    assert calibration_rounds >= 4  # start-up calibration fed the estimator
    assert mape > 0  # the error of served rounds is measured
    loads = [load for d in devices for load in d.stats.loads]
    assert all(0.0 <= load <= 1.0 for load in loads) and max(loads) > 0
