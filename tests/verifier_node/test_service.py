"""The service over the in-memory transport (fast), config and metrics."""

from __future__ import annotations

import argparse
import asyncio
import urllib.request
from pathlib import Path

import pytest

from runtime.models import tokenizer_fingerprint_of
from runtime.mosquitto import free_port
from runtime.transport import MemoryBroker, MemoryTransport, Message, Will
from schemas import (
    DraftRequest,
    ErrorCode,
    SamplingParams,
    Verdict,
    VerifierStatus,
    decode,
    encode,
)
from tests.verifier_node.helpers import greedy_truth, random_prompts, running_verifier
from tests.verifier_node.scripted import ScriptedDevice
from verifier_node.config import ConfigError, VerifierConfig, add_config_arguments, config_from_args
from verifier_node.metrics import VerifierMetrics

VOCAB = 400  # prompts and noise stay below the tiny vocabulary (~512)


def memory_factory(broker: MemoryBroker):
    def make(config: VerifierConfig, online: VerifierStatus, offline: VerifierStatus):
        topic = config.topics.verifier_status(config.verifier_id)
        return MemoryTransport(
            broker,
            will=Will(topic, encode(offline)),
            birth=Message(topic, encode(online), retain=True),
        )

    return make


def config(**kw) -> VerifierConfig:
    base = {"topic_prefix": "mem/sled/v1", "max_batch": 4, "max_wait_ms": 2.0}
    return VerifierConfig(**{**base, **kw})


async def test_greedy_and_centralized_over_memory(llama_dir: Path) -> None:
    prompts = random_prompts(4, VOCAB, seed=3)
    truth = greedy_truth(llama_dir, prompts, 12)
    broker = MemoryBroker()
    cfg = config()
    async with running_verifier(cfg, llama_dir, memory_factory(broker)) as service:
        devices = []
        for i in range(2):
            t = MemoryTransport(broker)
            await t.__aenter__()
            d = ScriptedDevice(
                t, cfg.topics, f"m{i}", vocab=VOCAB, fingerprint=service.fingerprint, seed=i
            )
            await d.start()
            devices.append(d)
        sled_out = await asyncio.gather(
            devices[0].generate(prompts[0], truth[0], 12),
            devices[1].generate(prompts[1], truth[1], 12),
        )
        central_out = await asyncio.gather(
            devices[0].centralized(prompts[2], 12), devices[1].centralized(prompts[3], 12)
        )
        for d in devices:
            await d.stop()
        # Retained online status while running.
        (status,) = broker.retained_for(cfg.topics.verifier_status(cfg.verifier_id))
        got = decode(status.payload, expect=VerifierStatus)
        assert got.online and got.fingerprint == service.fingerprint and got.max_batch == 4
    assert list(sled_out) == truth[:2]
    assert list(central_out) == truth[2:]
    (status,) = broker.retained_for(cfg.topics.verifier_status(cfg.verifier_id))
    assert not decode(status.payload, expect=VerifierStatus).online  # clean stop


async def test_static_batching_fires_when_every_session_waits(llama_dir: Path) -> None:
    """max_wait_ms = inf (the paper's static batching) must not stall: a batch fires
    once every active session has a request queued."""
    prompts = random_prompts(3, VOCAB, seed=5)
    truth = greedy_truth(llama_dir, prompts, 8)
    broker = MemoryBroker()
    cfg = config(max_wait_ms=float("inf"), max_batch=16)
    async with running_verifier(cfg, llama_dir, memory_factory(broker)) as service:
        devices = []
        for i in range(3):
            t = MemoryTransport(broker)
            await t.__aenter__()
            d = ScriptedDevice(
                t, cfg.topics, f"st{i}", vocab=VOCAB, fingerprint=service.fingerprint, seed=i
            )
            await d.start()
            devices.append(d)
        out = await asyncio.wait_for(
            asyncio.gather(*(d.generate(prompts[i], truth[i], 8) for i, d in enumerate(devices))),
            30,
        )
        for d in devices:
            await d.stop()
    assert list(out) == truth


async def test_sampling_is_reproducible_for_a_seed(llama_dir: Path) -> None:
    """Same seed, same drafts: same output, whatever the batching and timing."""
    prompts = random_prompts(3, VOCAB, seed=4)
    params = SamplingParams(temperature=0.2, top_k=5, top_p=0.95, seed=42)  # flat tiny model
    outputs = []
    for run in range(2):
        broker = MemoryBroker()
        async with running_verifier(
            config(max_batch=1 + run), llama_dir, memory_factory(broker)
        ) as service:
            t = MemoryTransport(broker)
            await t.__aenter__()
            d = ScriptedDevice(
                t, config().topics, "s", vocab=VOCAB, fingerprint=service.fingerprint, seed=9
            )
            truth = greedy_truth(llama_dir, prompts, 16)  # plausible drafts
            await d.start()
            outs = []
            for i, p in enumerate(prompts):
                d.rng.seed(i)  # same drafts; fixed session ids (the seed mixes them in)
                outs.append(await d.generate(p, truth[i], 16, params=params, session=f"sess{i}"))
            await d.stop()
            assert d.stats.accepted > 0 and d.stats.drafted > d.stats.accepted
        outputs.append(outs)
    assert outputs[0] == outputs[1]
    assert all(len(o) == 16 or o[-1] == 0 for o in outputs[0])


async def test_bad_input_gets_error_verdicts(llama_dir: Path) -> None:
    broker = MemoryBroker()
    cfg = config()
    async with running_verifier(cfg, llama_dir, memory_factory(broker)) as service:
        t = MemoryTransport(broker)
        await t.__aenter__()
        topics = cfg.topics
        await t.subscribe(topics.verdict("bad"))
        good = DraftRequest(
            session="b1", seq=0, start=2, draft=[1], context=[3, 4], prompt_len=2, max_new_tokens=4
        )
        vocab = service.limits.vocab_size
        oov = DraftRequest(
            session="b2",
            seq=3,
            start=2,
            draft=[vocab + 5],
            context=[3, 4],
            prompt_len=2,
            max_new_tokens=4,
        )
        wrong_fp = DraftRequest(
            session="b3",
            seq=0,
            start=2,
            draft=[1],
            context=[3, 4],
            prompt_len=2,
            max_new_tokens=4,
            fingerprint="0" * 16,
        )
        payloads = [
            b"\xc1garbage",
            encode(good).replace(b"\xa1v\x01", b"\xa1v\x07"),  # schema version 7
            encode(oov),
            b'{"k":"draft","v":1,"s":"b4","q":"x","n":0,"d":[]}',
            encode(wrong_fp),
        ]
        for p in payloads:
            await t.publish(topics.draft("bad"), p)
        got: list[Verdict] = []
        async for msg in t.messages():
            got.append(decode(msg.payload, expect=Verdict))
            if len(got) == len(payloads):
                break
    codes = {(v.session, v.code) for v in got}
    assert codes == {
        ("", ErrorCode.MALFORMED),
        ("b1", ErrorCode.BAD_VERSION),
        ("b2", ErrorCode.OUT_OF_VOCAB),
        ("b4", ErrorCode.BAD_FIELD),
        ("b3", ErrorCode.TOKENIZER_MISMATCH),
    }
    assert next(v for v in got if v.session == "b2").seq == 3  # the device can match it
    assert all(v.message for v in got)


def test_config_precedence(tmp_path: Path) -> None:
    toml = tmp_path / "v.toml"
    toml.write_text('[verifier]\nmax_batch = 3\nmax_wait_ms = 7.5\nverifier_id = "from-toml"\n')
    env = {"SLED_MAX_BATCH": "5", "SLED_MAX_WAIT_MS": "inf", "SLED_CONFIG": str(toml)}
    cfg = VerifierConfig.load({"max_batch": 9, "threads": None}, env=env)
    assert cfg.max_batch == 9  # flag beats env
    assert cfg.max_wait_ms == float("inf") and cfg.batch_wait_ms is None  # env: static batching
    assert cfg.verifier_id == "from-toml"  # TOML beats default
    assert cfg.threads == 0
    assert cfg.mqtt().client_id == "sled-verifier-from-toml"
    with pytest.raises(ConfigError):
        VerifierConfig.load({}, env={"SLED_MAX_BATCH": "many"})
    with pytest.raises(ConfigError):
        VerifierConfig(max_batch=0)
    with pytest.raises(ConfigError):
        VerifierConfig(verifier_id="bad/id")


def test_cli_flags_build_the_config() -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args(
        ["--model-dir", "/m", "--max-batch", "8", "--share-group", "g1", "--log-json"]
    )
    cfg = config_from_args(args)
    assert (cfg.model_dir, cfg.max_batch, cfg.share_group, cfg.log_json) == ("/m", 8, "g1", True)
    assert cfg.topics.all_drafts(cfg.share_group) == "$share/g1/sled/v1/dev/+/draft"


def test_metrics_endpoint_serves_prometheus_text() -> None:
    metrics = VerifierMetrics()
    port = free_port()
    metrics.serve(port, "127.0.0.1")
    try:
        metrics.requests.labels(outcome="verified").inc()
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    finally:
        metrics.close()
    text = body.decode()
    for name in (
        "sled_verifier_batch_size",
        "sled_verifier_kv_cache_bytes",
        "sled_verifier_requests_total",
    ):
        assert name in text


def test_fingerprint_of_the_model_dir(llama_dir: Path) -> None:
    fp = tokenizer_fingerprint_of(llama_dir)
    assert fp is not None and len(fp) == 16
    assert tokenizer_fingerprint_of(llama_dir / "missing") is None
