"""The fuzz payloads: malformed and hostile messages for the nodes (hypothesis-generated).

Two families, published by fake devices ``fuzz-0 … fuzz-7`` (:mod:`bench.fuzz`):

* **draft topic** (``…/dev/fuzz-N/draft``, read by the verifier): random bytes, random
  msgpack and JSON values, and valid ``DraftRequest`` / ``CentralizedRequest`` maps with
  one thing broken — a field dropped, a wrong type, a huge list, an unknown schema
  version or kind, out-of-vocabulary / negative / 2**64 token ids, NaN probabilities,
  hostile sampling parameters (``top_k`` 2**63, temperature 1e-320, ``top_p`` inf),
  id lists of up to 200,000 ids, bad session ids — plus *valid* requests that reuse
  other devices' session ids (sessions are keyed by the device of the topic, so they
  must not disturb them);
* **request topic** (``…/dev/{edge}/req``, read by an edge node): the same for
  ``GenerateRequest``, always invalid (a valid one would start a generation).

The strategies need ``hypothesis`` (a dev dependency); generation uses
:func:`generate` (no shrinking, no example database), so this is a load generator
driven by hypothesis' distribution, not a property test.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import msgpack

from schemas import SCHEMA_VERSION, Limits, decode
from schemas.errors import SchemaError

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

Channel = Literal["draft", "req"]
Encoding = Literal["msgpack", "json", "raw"]

_pick = random.Random(0)  # chooses a victim session at render time (not inside strategies)

VICTIM = "\x00victim"  # placeholder session id: replaced by a sniffed real session id
FUZZ_DEVICES = tuple(f"fuzz-{i}" for i in range(8))
BAD_IDS = ("", "a/b", "a+b", "#", "x" * 65, "\x00", "sp ace", "é" * 3, "$share")
HUGE_INTS = (-1, -(2**63), 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30)
# Sampling parameters that once broke a whole batch or a generation (issue 15): top_k
# beyond the vocabulary / int32 / int64, temperatures that overflow the logits, top_p
# that is not a finite number in (0, 1].
HOSTILE_TOP_K = (2**63, 2**63 - 1, 2**31, 10**6, 4097, 2**64 - 1)
HOSTILE_TEMPERATURE = (1e-320, 5e-324, 1e-5, 0.000999)
HOSTILE_TOP_P = (math.inf, -math.inf, math.nan, 0.0, 1.0000001, -0.5)


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
            st.tuples(
                st.sampled_from(id_keys), st.sampled_from([65, 1000, 32_769, 100_000, 200_000])
            ).map(lambda t: ("huge", put(t[0], [1] * t[1])))
        )
    for params_key in [k for k in keys if k in ("p", "params")]:
        edits.append(hostile_params().map(_hostile_edit(params_key, put)))
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


def _hostile_edit(
    params_key: str, put: Callable[[str, Any], Edit]
) -> Callable[[dict[str, Any]], tuple[str, Edit]]:
    return lambda params: ("hostile_params", put(params_key, params))


def hostile_params() -> SearchStrategy[dict[str, Any]]:
    """A sampling-parameters map with one hostile value (the others valid)."""
    from hypothesis import strategies as st

    base = {"temperature": 0.7, "top_k": 40, "top_p": 0.9, "seed": 1}
    one = st.one_of(
        st.sampled_from(HOSTILE_TOP_K).map(lambda v: {"top_k": v}),
        st.sampled_from(HOSTILE_TEMPERATURE).map(lambda v: {"temperature": v}),
        st.sampled_from(HOSTILE_TOP_P).map(lambda v: {"top_p": v}),
    )
    return one.map(lambda change: {**base, **change})


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
