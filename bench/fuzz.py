"""Fuzz the nodes over MQTT with malformed and hostile payloads (hypothesis-generated).

    python -m bench.fuzz --broker mqtt://127.0.0.1:1883 --prefix sled/v1 \\
        --payloads 100000 --edge pi-1 --json fuzz.json

Two families of payloads, published by fake devices ``fuzz-0 … fuzz-7``:

* **draft topic** (``…/dev/fuzz-N/draft``, read by the verifier): random bytes, random
  msgpack and JSON values, and valid ``DraftRequest`` / ``CentralizedRequest`` maps with
  one thing broken — a field dropped, a wrong type, a huge list, an unknown schema
  version or kind, out-of-vocabulary / negative / 2**64 token ids, NaN probabilities,
  bad session ids — plus *valid* requests that reuse other devices' session ids
  (sessions are keyed by the device of the topic, so they must not disturb them);
* **request topic** (``…/dev/{edge}/req``, read by an edge node): the same for
  ``GenerateRequest``, always invalid (a valid one would start a generation).

Every payload on a draft topic must draw exactly one verdict (an error verdict for a
bad one) or be dropped with a ``verifier.drop`` log line; every payload on a request
topic must be refused with an ``edge.bad_request`` log line (and an error
``ResultFinal`` when its request id could be read). :func:`run_fuzz` publishes and
counts the verdicts; the test ``tests/reliability/test_fuzz.py`` adds the log checks
and a well-behaved device that must finish token-exact meanwhile.

The strategies need ``hypothesis`` (a dev dependency); generation uses
:func:`generate` (no shrinking, no example database), so this is a load generator
driven by hypothesis' distribution, not a property test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import msgpack

from schemas import SCHEMA_VERSION, Limits, Topics, Verdict, decode
from schemas.errors import SchemaError

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

    from runtime.transport import Transport

Channel = Literal["draft", "req"]
Encoding = Literal["msgpack", "json", "raw"]

_pick = random.Random(0)  # chooses a victim session at render time (not inside strategies)

VICTIM = "\x00victim"  # placeholder session id: replaced by a sniffed real session id
FUZZ_DEVICES = tuple(f"fuzz-{i}" for i in range(8))
BAD_IDS = ("", "a/b", "a+b", "#", "x" * 65, "\x00", "sp ace", "é" * 3, "$share")
HUGE_INTS = (-1, -(2**63), 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30)


@dataclass(frozen=True, slots=True)
class FuzzCase:
    """One payload to publish: ``body`` is a value (encoded later) or raw bytes."""

    channel: Channel
    family: str  # what kind of damage, for the report
    body: Any
    encoding: Encoding = "msgpack"
    device: int = 0  # index into FUZZ_DEVICES (draft channel)


def render(case: FuzzCase, sessions: Sequence[str] = ()) -> bytes:
    """The payload bytes; ``VICTIM`` session ids become one of ``sessions``."""
    if case.encoding == "raw":
        return bytes(case.body)
    body = case.body
    if isinstance(body, dict) and body.get("s") == VICTIM:
        body = {**body, "s": _pick.choice(sessions) if sessions else "0123456789ab"}
    if case.encoding == "json":
        try:
            return json.dumps(body, allow_nan=True, default=repr).encode()
        except (TypeError, ValueError):
            return b"{" + repr(body).encode(errors="replace")
    try:
        packed: bytes = msgpack.packb(body, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        packed = msgpack.packb(repr(body), use_bin_type=True)
    return packed


# -- strategies ----------------------------------------------------------------------------
def _values() -> SearchStrategy[Any]:
    """Any msgpack-able value, nested a little."""
    from hypothesis import strategies as st

    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**63), max_value=2**64 - 1)
        | st.floats(allow_nan=True, allow_infinity=True)
        | st.text(max_size=20)
        | st.binary(max_size=20)
    )
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=3), inner, max_size=5)
        ),
        max_leaves=6,
    )


def _good_draft(vocab: int) -> SearchStrategy[dict[str, Any]]:
    """A valid DraftRequest map (first request: with context), session maybe a victim's."""
    from hypothesis import strategies as st

    tok = st.integers(0, vocab - 1)

    @st.composite
    def build(draw: Callable[[SearchStrategy[Any]], Any]) -> dict[str, Any]:
        context = draw(st.lists(tok, min_size=1, max_size=24))
        body: dict[str, Any] = {
            "k": "draft",
            "v": SCHEMA_VERSION,
            "s": draw(st.sampled_from([VICTIM, VICTIM, "fuzzsession1", "abcdef012345"])),
            "q": draw(st.integers(0, 3)),
            "n": len(context),
            "d": draw(st.lists(tok, max_size=8)),
        }
        if draw(st.booleans()):
            body.update(c=context, pl=draw(st.integers(1, len(context))), m=draw(st.integers(1, 8)))
            body["p"] = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0}
        return body

    return build()


def _good_central(vocab: int) -> SearchStrategy[dict[str, Any]]:
    from hypothesis import strategies as st

    return st.fixed_dictionaries(
        {
            "k": st.just("central"),
            "v": st.just(SCHEMA_VERSION),
            "s": st.sampled_from(["centralfuzz1", VICTIM]),
            "c": st.lists(st.integers(0, vocab - 1), min_size=1, max_size=8),
            "m": st.integers(1, 4),
        }
    )


def _good_generate() -> SearchStrategy[dict[str, Any]]:
    from hypothesis import strategies as st

    return st.fixed_dictionaries(
        {
            "k": st.just("generate"),
            "v": st.just(SCHEMA_VERSION),
            "request": st.sampled_from(["fuzzreq1", "fuzz-req.2", "r"]),
            "prompt": st.text(min_size=1, max_size=30),
            "max_new_tokens": st.integers(1, 4),
            "mode": st.sampled_from(["sled", "local", "centralized"]),
            "format": st.sampled_from(["msgpack", "json"]),
        }
    )


Edit = Callable[[dict[str, Any]], dict[str, Any]]


def _breakage(vocab: int, keys: Sequence[str]) -> SearchStrategy[tuple[str, Edit]]:
    """A named edit that makes a valid map invalid."""
    from hypothesis import strategies as st

    def put(key: str, value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
        return lambda body: {**body, key: value}

    def drop(key: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
        return lambda body: {k: v for k, v in body.items() if k != key}

    id_keys = [k for k in keys if k in ("d", "c")]
    wrong = st.one_of(
        st.none(),
        st.text(max_size=5),
        st.floats(),
        st.binary(max_size=5),
        st.lists(st.text(max_size=2), max_size=3),
        st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    )
    versions = [0, 2, 999, -1, "1", 1.0, None, True]
    kinds = ["", "Draft", "verdict", "chunk", "nope", 7]
    edits = [
        st.sampled_from([k for k in keys if k not in ("k", "v")]).map(lambda k: ("drop", drop(k))),
        st.tuples(st.sampled_from(list(keys)), wrong).map(lambda kv: ("type", put(*kv))),
        st.sampled_from(versions).map(lambda v: ("version", put("v", v))),
        st.sampled_from(kinds).map(lambda v: ("kind", put("k", v))),
    ]
    if id_keys:
        oov = st.sampled_from([vocab, vocab + 1, 10**6, *HUGE_INTS])
        edits.append(
            st.tuples(st.sampled_from(id_keys), oov, st.integers(0, 5)).map(
                lambda t: ("out_of_vocab", put(t[0], [1] * t[2] + [t[1]]))
            )
        )
        edits.append(
            st.tuples(st.sampled_from(id_keys), st.sampled_from([65, 1000, 32_769, 100_000])).map(
                lambda t: ("huge", put(t[0], [1] * t[1]))
            )
        )
    if "s" in keys:
        edits.append(st.sampled_from(BAD_IDS).map(lambda v: ("bad_id", put("s", v))))
    if "request" in keys:
        edits.append(st.sampled_from(BAD_IDS).map(lambda v: ("bad_id", put("request", v))))
        prompts = ["", "x" * 70_000]
        budgets = [0, -1, 8193, 10**9, 2**64]
        edits.append(st.sampled_from(prompts).map(lambda v: ("bad_prompt", put("prompt", v))))
        edits.append(st.sampled_from(budgets).map(lambda v: ("range", put("max_new_tokens", v))))
        edits.append(st.sampled_from(["x", "", "SLED"]).map(lambda v: ("enum", put("mode", v))))
        edits.append(st.sampled_from(["xml", ""]).map(lambda v: ("enum", put("format", v))))
    if "m" in keys:
        edits.append(st.sampled_from([0, -5, 8193, 2**64]).map(lambda v: ("range", put("m", v))))
    if "q" in keys:
        edits.append(st.sampled_from(HUGE_INTS).map(lambda v: ("range", put("q", v))))
    return st.one_of(*edits)


def _broken(
    valid: SearchStrategy[dict[str, Any]], vocab: int, keys: Sequence[str]
) -> SearchStrategy[tuple[str, dict[str, Any]]]:
    from hypothesis import strategies as st

    return st.tuples(valid, _breakage(vocab, keys)).map(lambda t: (t[1][0], t[1][1](t[0])))


DRAFT_KEYS = ("k", "v", "s", "q", "n", "d", "t", "qi", "qp", "c", "pl", "m", "p", "f")
CENTRAL_KEYS = ("k", "v", "s", "c", "m", "p", "f", "t")
GENERATE_KEYS = ("k", "v", "request", "prompt", "max_new_tokens", "params", "mode", "format")


def draft_cases(vocab: int) -> SearchStrategy[FuzzCase]:
    """Payloads for the verifier's draft topics (some valid: they must be served)."""
    from hypothesis import strategies as st

    device = st.integers(0, len(FUZZ_DEVICES) - 1)
    enc: SearchStrategy[Encoding] = st.sampled_from(["msgpack", "msgpack", "msgpack", "json"])
    raw = st.tuples(st.binary(max_size=64), device).map(
        lambda t: FuzzCase("draft", "bytes", t[0], "raw", t[1])
    )
    value = st.tuples(_values(), enc, device).map(
        lambda t: FuzzCase("draft", "value", t[0], t[1], t[2])
    )
    broken = st.tuples(_broken(_good_draft(vocab), vocab, DRAFT_KEYS), enc, device).map(
        lambda t: FuzzCase("draft", f"draft.{t[0][0]}", t[0][1], t[1], t[2])
    )
    broken_central = (
        st.tuples(_broken(_good_central(vocab), vocab, CENTRAL_KEYS), device)
        .map(lambda t: FuzzCase("draft", f"central.{t[0][0]}", t[0][1], "msgpack", t[1]))
        .filter(lambda c: not is_valid(c, vocab))  # a valid one would start a generation
    )
    stolen = st.tuples(_good_draft(vocab), device).map(
        lambda t: FuzzCase("draft", "draft.valid", t[0], "msgpack", t[1])
    )
    return st.one_of(raw, value, broken, broken, broken_central, broken_central, stolen)


def request_cases() -> SearchStrategy[FuzzCase]:
    """Payloads for an edge node's request topic, all invalid."""
    from hypothesis import strategies as st

    enc: SearchStrategy[Encoding] = st.sampled_from(["msgpack", "msgpack", "json"])
    raw = st.binary(max_size=64).map(lambda b: FuzzCase("req", "bytes", b, "raw"))
    value = st.tuples(_values(), enc).map(lambda t: FuzzCase("req", "value", t[0], t[1]))
    broken = st.tuples(_broken(_good_generate(), 0, GENERATE_KEYS), enc).map(
        lambda t: FuzzCase("req", f"generate.{t[0][0]}", t[0][1], t[1])
    )
    return st.one_of(raw, value, broken, broken).filter(lambda c: not is_valid(c))


def generate(
    strategy: SearchStrategy[FuzzCase], n: int, *, seed: int = 0, batch: int = 5
) -> list[FuzzCase]:
    """``n`` cases drawn by hypothesis (``batch`` per example; no shrinking, no database)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st

    out: list[FuzzCase] = []

    @hseed(seed)
    @settings(
        max_examples=math.ceil(n / batch) + 5,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(strategy, min_size=batch, max_size=batch))
    def collect(cases: list[FuzzCase]) -> None:
        if len(out) < n:
            out.extend(cases[: n - len(out)])

    collect()
    return out


def is_valid(case: FuzzCase, vocab: int | None = None) -> bool:
    """Would a node accept this payload (token ids checked against ``vocab``)?"""
    try:
        decode(render(case, ["0123456789ab"]), limits=Limits(vocab_size=vocab))
    except SchemaError:
        return False
    return True


# -- publishing ------------------------------------------------------------------------------
@dataclass
class FuzzReport:
    """What was sent and what came back. Rates are payloads per second."""

    sent_draft: int = 0
    sent_req: int = 0
    verdicts: int = 0  # on the fuzz devices' verdict topics
    error_verdicts: int = 0
    families: dict[str, int] = field(default_factory=dict)
    codes: dict[str, int] = field(default_factory=dict)
    generate_s: float = 0.0
    publish_s: float = 0.0
    drain_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        total = self.sent_draft + self.sent_req
        return {
            "payloads": total,
            "sent_draft": self.sent_draft,
            "sent_req": self.sent_req,
            "verdicts": self.verdicts,
            "error_verdicts": self.error_verdicts,
            "generate_s": round(self.generate_s, 2),
            "publish_s": round(self.publish_s, 2),
            "drain_s": round(self.drain_s, 2),
            "payloads_per_s": round(total / max(self.publish_s + self.drain_s, 1e-9), 1),
            "families": dict(sorted(self.families.items())),
            "codes": dict(sorted(self.codes.items())),
        }


async def run_fuzz(
    bus: Transport,
    topics: Topics,
    cases: Sequence[FuzzCase],
    *,
    edge: str | None,
    sessions: Callable[[], Sequence[str]] = lambda: (),
    expected_verdicts: Callable[[FuzzReport], int] | None = None,
    concurrency: int = 10,
    drain_timeout_s: float = 60.0,
) -> FuzzReport:
    """Publish ``cases`` (req cases to ``edge``'s request topic); count verdicts.

    ``bus`` must already be subscribed to ``topics.all_verdicts``-style filters for the
    fuzz devices (done here). Waits until the verdict count stops growing (or reaches
    ``expected_verdicts``) for at most ``drain_timeout_s``.
    """
    report = FuzzReport()
    for dev in FUZZ_DEVICES:
        await bus.subscribe(topics.verdict(dev))

    async def count() -> None:
        async for msg in bus.messages():
            if not msg.topic.endswith("/verdict"):
                continue
            report.verdicts += 1
            try:
                rec = decode(msg.payload)
            except SchemaError:
                continue
            code = getattr(rec, "code", None)
            if code is not None:
                report.error_verdicts += 1
            key = str(code) if isinstance(rec, Verdict) else f"{rec.KIND}:{code}"
            report.codes[key] = report.codes.get(key, 0) + 1

    counter = asyncio.create_task(count(), name="fuzz-verdict-counter")
    sem = asyncio.Semaphore(concurrency)

    async def send(case: FuzzCase) -> None:
        if case.channel == "req":
            if edge is None:
                return
            topic = topics.req(edge)
            report.sent_req += 1
        else:
            topic = topics.draft(FUZZ_DEVICES[case.device])
            report.sent_draft += 1
        report.families[case.family] = report.families.get(case.family, 0) + 1
        async with sem:
            await bus.publish(topic, render(case, sessions()), qos=1)

    try:
        started = time.monotonic()
        await asyncio.gather(*(send(c) for c in cases))
        report.publish_s = time.monotonic() - started
        started = time.monotonic()
        last, quiet_since = -1, time.monotonic()
        while time.monotonic() - started < drain_timeout_s:
            want = expected_verdicts(report) if expected_verdicts else None
            if want is not None and report.verdicts >= want:
                break
            if report.verdicts != last:
                last, quiet_since = report.verdicts, time.monotonic()
            elif want is None and time.monotonic() - quiet_since > 2.0:
                break
            await asyncio.sleep(0.05)
        report.drain_s = time.monotonic() - started
    finally:
        counter.cancel()
    return report


# -- command line ----------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sled.cli_common import add_broker_arguments

    add_broker_arguments(parser)
    parser.add_argument("--payloads", type=int, default=100_000, help="how many to publish")
    parser.add_argument("--req-share", type=float, default=0.25, help="fraction for the edge")
    parser.add_argument("--edge", default=None, help="device id whose request topic to fuzz")
    parser.add_argument("--vocab", type=int, default=512, help="the target's vocabulary size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the report here")


def run(args: argparse.Namespace) -> int:
    from runtime.transport import MqttTransport
    from sled.cli_common import mqtt_config

    n_req = int(args.payloads * args.req_share) if args.edge else 0
    started = time.monotonic()
    cases = generate(draft_cases(args.vocab), args.payloads - n_req, seed=args.seed)
    cases += generate(request_cases(), n_req, seed=args.seed + 1)
    random.Random(args.seed).shuffle(cases)
    generate_s = time.monotonic() - started

    async def main() -> FuzzReport:
        async with MqttTransport(mqtt_config(args)) as bus:
            return await run_fuzz(bus, Topics(args.prefix), cases, edge=args.edge)

    report = asyncio.run(main())
    report.generate_s = generate_s
    out = report.as_dict()
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__)
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
