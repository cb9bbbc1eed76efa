"""Plain-value regression tests for bugs the fault tests found in other packages."""

from __future__ import annotations

from edge_node.policy import Commit, DraftToken, Event, PolicyConfig, RttEstimator, SledSession
from runtime.mosquitto import Mosquitto
from runtime.transport import MqttConfig
from schemas import ErrorCode, SamplingParams, Topics, Verdict
from tests.reliability.procs import forget_session

PROMPT = [11, 12, 13]


def session(**cfg: float) -> SledSession:
    config = PolicyConfig(**{"max_draft": 4, "fallback_after": 1_000_000, **cfg})  # type: ignore[arg-type]
    return SledSession(
        session="abc123abc123",
        prompt=list(PROMPT),
        max_new_tokens=50,
        params=SamplingParams(),
        eos_ids=frozenset({0}),
        config=config,
        rtt=RttEstimator(config),
    )


def resync(s: SledSession) -> Verdict:
    assert s.outstanding is not None
    return Verdict(session=s.session, seq=s.outstanding.seq, code=ErrorCode.RESYNC.value)


def test_backlog_of_resyncs_for_one_seq_counts_once() -> None:
    """A restarted verifier answers ``resync`` to every queued copy of the same seq.

    While the verifier was down the device resent seq N (without context) on every
    timeout, and the broker queued each copy in the verifier's persistent session. The
    new verifier answers all of them with ``resync`` before the device's resend with
    context arrives. Those answers are to requests sent *before* the context resend, so
    they must not count as "the verifier asked to resync N times in a row" (the device
    failed the generation with exactly that error after a 6 s verifier restart).
    """
    s = session()
    s.needs_context = False  # a session past its first round
    s.add_draft(DraftToken(5))
    s.build_request(0.0)
    for i in range(10):  # the verifier is down: resend the same seq, no context
        assert s.on_timeout() is Event.RESEND
        assert s.build_request(0.1 * (i + 1)).context is None
    assert s.on_verdict(resync(s), 2.0) is Event.RESEND  # the first answer: resend with context
    request = s.build_request(2.0)
    assert request.context == PROMPT
    for _ in range(9):  # answers to the older, context-less copies
        assert s.on_verdict(resync(s), 2.01) is Event.IGNORED
    assert s.error is None and not s.done
    ok = Verdict(session=s.session, seq=request.seq, accepted=1, token=7, committed=5)
    assert isinstance(s.on_verdict(ok, 2.1), Commit)


def test_a_verifier_that_keeps_asking_for_resync_is_still_given_up_on() -> None:
    """Resyncs beyond one per context-less send still count towards ``max_resyncs``."""
    s = session(max_resyncs=2)
    s.needs_context = False
    s.build_request(0.0)
    assert s.on_timeout() is Event.RESEND
    s.build_request(0.5)  # two context-less copies of seq 0 are out
    assert s.on_verdict(resync(s), 0.6) is Event.RESEND
    assert s.build_request(0.6).context == PROMPT
    assert s.on_verdict(resync(s), 0.61) is Event.IGNORED  # answers the second copy
    assert s.on_verdict(resync(s), 0.7) is Event.RESEND  # answers the context resend?!
    s.build_request(0.7)
    assert s.on_verdict(resync(s), 0.8) is Event.ERROR
    assert s.error is not None and "resync" in s.error


class _BytesTokenizer:
    """A drafter stand-in whose token ids are bytes (a byte-level tokenizer in miniature)."""

    fingerprint = "0" * 16

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def test_streamed_text_equals_final_text_when_generation_ends_mid_character() -> None:
    from edge_node.results import ResultStream

    run = ResultStream(request="r1", mode="sled", prompt_tokens=1, decode=_BytesTokenizer().decode)
    euro = list("€".encode())  # 3 bytes; the budget ends after 2 of them
    chunks = [run.chunk([0x61], verified=True), run.chunk(euro[:2], verified=True)]
    final = run.final("length")
    assert "".join(c.text for c in chunks) == final.text


async def test_publish_in_flight_when_the_broker_dies_is_sent_again_after_reconnect() -> None:
    """A QoS 1 publish whose PUBACK never came (the broker died) goes out on the new
    connection as soon as the client has reconnected, instead of waiting out
    ``op_timeout_s`` on the dead one and failing (the edge then dropped that result
    chunk: a gap in the app's stream after a broker crash, test_faults)."""
    import asyncio
    import time

    from runtime.mosquitto import Mosquitto
    from runtime.transport import MqttConfig, MqttTransport

    with Mosquitto.start() as broker:
        cfg = MqttConfig(host=broker.host, port=broker.port, connect_timeout_s=5, op_timeout_s=8,
                         backoff_max_s=0.2)  # fmt: skip
        async with MqttTransport(cfg) as sub, MqttTransport(cfg) as pub:
            await sub.subscribe("regress/inflight")
            await asyncio.sleep(1.2)  # the subscription is in the broker's autosave
            assert broker.process is not None
            broker.process.send_signal(19)  # SIGSTOP: the PUBLISH is sent, no PUBACK comes
            # retained: the subscriber gets it whether its resubscription after the restart
            # comes before or after the re-sent publish (a race under load, not the point)
            sending = asyncio.create_task(pub.publish("regress/inflight", b"chunk 3", retain=True))
            await asyncio.sleep(0.3)
            assert not sending.done()
            await asyncio.to_thread(broker.restart, kill=True)
            restarted = time.monotonic()
            await asyncio.wait_for(sending, 8)  # before the fix: TransportTimeout after 8 s
            assert time.monotonic() - restarted < 4.0
            msg = await asyncio.wait_for(anext(sub.messages()), 5)
            assert msg.payload == b"chunk 3"


async def test_a_dead_shared_verifier_does_not_keep_its_share_of_drafts(
    broker: Mosquitto, topics: Topics
) -> None:
    import asyncio
    import contextlib

    from runtime.transport import MqttTransport
    from verifier_node.config import VerifierConfig

    def cfg(verifier: str) -> MqttConfig:
        config = VerifierConfig(verifier_id=verifier, broker_url=broker.url,
                                topic_prefix=topics.prefix, share_group="g")  # fmt: skip
        return config.mqtt().with_(connect_timeout_s=5, op_timeout_s=5)  # type: ignore[no-any-return]

    async with MqttTransport(cfg("va")) as alive, MqttTransport(broker_cfg(broker)) as device:
        async with MqttTransport(cfg("vb")) as dying:
            await dying.subscribe(topics.all_drafts("g"))
        await alive.subscribe(topics.all_drafts("g"))
        for i in range(20):
            await device.publish(topics.draft("pi-1"), b"draft %d" % i)
        got = 0
        with contextlib.suppress(TimeoutError):
            while True:
                await asyncio.wait_for(anext(alive.messages()), 1.0)
                got += 1
        assert got == 20
    await forget_session(cfg("vb"), cfg("vb").client_id or "")


def broker_cfg(broker: Mosquitto) -> MqttConfig:
    return MqttConfig(host=broker.host, port=broker.port, connect_timeout_s=5, op_timeout_s=5)


def test_result_text_ignores_a_chunk_delivered_twice() -> None:
    """QoS 1 is at-least-once: after a broker restart the edge's publish of a chunk can
    reach the app twice (seen in test_faults: indices 0, 1, 2, 2). The text must not
    repeat those tokens."""
    from schemas import ResultChunk
    from sled.client import ResultText

    chunks = [ResultChunk(request="r1", index=i, text=t, tokens=[i])
              for i, t in enumerate(["a", "b", "c"])]  # fmt: skip
    text = ResultText()
    for c in (chunks[0], chunks[1], chunks[1], chunks[2], chunks[0]):
        text.apply(c)
    assert (text.text, text.tokens) == ("abc", [0, 1, 2])


async def test_a_request_delivered_twice_is_generated_once() -> None:
    """QoS 1 may deliver a GenerateRequest twice (seen after a broker restart): the edge
    ran a second generation with the same request id on the same result topic, and
    the app got two interleaved streams (test_faults: "chunk 0 redelivered changed")."""
    import asyncio

    from edge_node.config import EdgeConfig
    from edge_node.service import EdgeNode
    from schemas import GenerateRequest, encode

    node = EdgeNode(EdgeConfig(device_id="pi-1"), drafter=_BytesTokenizer())  # type: ignore[arg-type]
    served: list[str] = []

    async def serve_one(req: GenerateRequest) -> None:
        served.append(req.request)

    node._serve_one = serve_one  # type: ignore[method-assign]
    payload = encode(GenerateRequest(request="r1", prompt="hi"))
    node._on_request(payload)
    node._on_request(payload)
    node._on_request(encode(GenerateRequest(request="r2", prompt="hi")))
    await asyncio.sleep(0.05)
    assert served == ["r1", "r2"]
