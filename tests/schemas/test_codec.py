"""Round trips of every wire record through msgpack and JSON, by example and by property."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import (
    BY_KIND,
    MESSAGE_TYPES,
    NO_TOKEN,
    SCHEMA_VERSION,
    CentralizedRequest,
    DeviceStatus,
    DraftRequest,
    ErrorCode,
    GeneratedTokens,
    GenerateRequest,
    Limits,
    Record,
    ResultChunk,
    ResultFinal,
    SamplingParams,
    SchemaError,
    Verdict,
    VerifierStatus,
    decode,
    encode,
    to_map,
)
from tests.schemas.strategies import BY_TYPE, LIMITS, records

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# One tiny literal example per message type.
EXAMPLES: list[Record] = [
    DraftRequest(
        session="a1b2c3d4e5f6",
        seq=0,
        start=3,
        draft=[17, 4, 99],
        sent_at_ns=1_700_000_000_000_000_000,
        context=[1, 2, 3],
        prompt_len=3,
        max_new_tokens=16,
        params=SamplingParams(temperature=0.7, top_k=40, top_p=0.9, seed=7),
        fingerprint="0123456789abcdef",
    ),
    DraftRequest(
        session="a1b2c3d4e5f6",
        seq=1,
        start=7,
        draft=[5, 6],
        q_ids=[[5, 8], [6]],
        q_probs=[[0.75, 0.25], [1.0]],
    ),
    Verdict(session="a1b2c3d4e5f6", seq=1, accepted=2, token=42, committed=10, done=True),
    Verdict(session="", seq=-1, code="malformed", message="invalid msgpack"),
    CentralizedRequest(session="c0ffee", prompt=[1, 2, 3], max_new_tokens=8),
    GeneratedTokens(session="c0ffee", seq=0, tokens=[7, 8], start=0),
    GenerateRequest(request="r1", prompt="In the beginning", max_new_tokens=32, format="json"),
    ResultChunk(request="r1", index=0, text=" God", tokens=[301], generated=1, drafted=4),
    ResultFinal(
        request="r1",
        finish_reason="length",
        text=" God created",
        tokens=[301, 302],
        completion_tokens=2,
        acceptance_rate=0.5,
        ttft_ms=12.5,
    ),
    DeviceStatus(device="pi-1", online=True, model="tiny", modes=["sled", "local"]),
    VerifierStatus(verifier="v1", online=False, max_batch=8),
]


def test_examples_cover_every_message_type() -> None:
    assert {type(r) for r in EXAMPLES} == set(MESSAGE_TYPES)


def test_strategies_cover_every_message_type() -> None:
    assert set(BY_TYPE) == set(MESSAGE_TYPES)


def test_kinds_are_unique_and_indexed() -> None:
    assert len(BY_KIND) == len(MESSAGE_TYPES)
    assert all(BY_KIND[t.KIND] is t for t in MESSAGE_TYPES)


@pytest.mark.parametrize("fmt", ["msgpack", "json"])
@pytest.mark.parametrize("record", EXAMPLES, ids=lambda r: type(r).__name__)
def test_example_round_trip(record: Record, fmt: Any) -> None:
    payload = encode(record, fmt)
    assert decode(payload, expect=type(record), limits=LIMITS) == record


@pytest.mark.parametrize("record", EXAMPLES, ids=lambda r: type(r).__name__)
def test_json_and_msgpack_carry_the_same_map(record: Record) -> None:
    from_json = json.loads(encode(record, "json"))
    from_msgpack = msgpack.unpackb(encode(record))
    assert from_json == from_msgpack
    assert from_json == {"k": record.KIND, "v": SCHEMA_VERSION, **to_map(record)}


def test_none_fields_are_left_out_and_hot_path_keys_are_short() -> None:
    body = msgpack.unpackb(encode(Verdict(session="s1", seq=3, accepted=2, token=9, committed=12)))
    assert body == {
        "k": "verdict",
        "v": 1,
        "s": "s1",
        "q": 3,
        "a": 2,
        "x": 9,
        "c": 12,
        "d": False,
        "w": 0,
        "u": 0,
        "l": 0.0,
    }
    draft = msgpack.unpackb(encode(DraftRequest(session="s1", seq=1, start=4, draft=[5])))
    assert set(draft) == {"k", "v", "s", "q", "n", "d", "t"}  # no qi/qp/c/pl/m/p/f


def test_floats_pack_in_5_bytes_when_float32_holds_them_exactly() -> None:
    base = Verdict(session="s1", seq=3, accepted=2, token=9, committed=12)
    sizes = {load: len(encode(dataclasses.replace(base, load=load))) for load in (0.0, 0.375, 0.1)}
    assert sizes[0.0] == sizes[0.375] == sizes[0.1] - 4  # 0.1 is not a float32: 9 bytes
    for load in sizes:
        got = decode(encode(dataclasses.replace(base, load=load)), expect=Verdict)
        assert got.load == load  # exact either way
    probs = [0.1, 0.9]  # one non-float32 value keeps every float of the message at 9 bytes
    req = DraftRequest(session="s1", seq=1, start=4, draft=[5, 6], q_ids=[[5, 7], [6]])
    req = dataclasses.replace(req, q_probs=[probs, [1.0]])
    assert decode(encode(req), expect=DraftRequest).q_probs == [probs, [1.0]]


@pytest.mark.parametrize("tpot_ms", [0.0, -5.0, math.inf, math.nan])
def test_tpot_objective_must_be_positive_and_finite(tpot_ms: float) -> None:
    req = DraftRequest.opening(
        "s1", 0, [1, 2], [3], prompt_len=2, max_new_tokens=8, fingerprint="0123456789abcdef"
    )
    assert (
        decode(encode(dataclasses.replace(req, tpot_ms=50.0)), expect=DraftRequest).tpot_ms == 50.0
    )
    with pytest.raises(SchemaError, match=r"draft\.o"):
        dataclasses.replace(req, tpot_ms=tpot_ms).check(LIMITS)


@pytest.mark.parametrize("load", [-0.1, 1.5, math.nan])
def test_verdict_load_must_be_a_fraction(load: float) -> None:
    with pytest.raises(SchemaError, match=r"verdict\.l"):
        Verdict(session="s1", seq=3, load=load).check(LIMITS)


def test_nested_params_use_field_names() -> None:
    body = msgpack.unpackb(encode(EXAMPLES[0]))
    assert body["p"] == {"temperature": 0.7, "top_k": 40, "top_p": 0.9, "seed": 7}


def test_unknown_extra_keys_are_ignored_for_forward_compatibility() -> None:
    body = msgpack.unpackb(encode(EXAMPLES[2]))
    body["zz"] = [1, 2, 3]
    assert decode(msgpack.packb(body), expect=Verdict) == EXAMPLES[2]


def test_decode_accepts_a_tuple_of_kinds() -> None:
    payload = encode(EXAMPLES[4])
    assert decode(payload, expect=(DraftRequest, CentralizedRequest)) == EXAMPLES[4]


def test_decode_without_expect_returns_the_right_type() -> None:
    for record in EXAMPLES:
        assert type(decode(encode(record), limits=LIMITS)) is type(record)


def test_verdict_ok_and_no_token() -> None:
    assert EXAMPLES[2].ok  # type: ignore[attr-defined]
    error = decode(encode(EXAMPLES[3]), expect=Verdict)
    assert not error.ok and error.token == NO_TOKEN and error.code == ErrorCode.MALFORMED


def test_sampling_params_greedy() -> None:
    assert SamplingParams().greedy
    assert not SamplingParams(temperature=0.8).greedy


def test_default_limits_leave_the_vocabulary_unchecked() -> None:
    record = DraftRequest(session="s", seq=0, start=0, draft=[10**9])
    assert decode(encode(record), expect=DraftRequest) == record
    with pytest.raises(SchemaError) as err:
        decode(encode(record), expect=DraftRequest, limits=Limits(vocab_size=100))
    assert err.value.code is ErrorCode.OUT_OF_VOCAB


# -- properties ----------------------------------------------------------------------


@PROPERTY
@given(records)
def test_any_valid_record_round_trips_through_msgpack(record: Record) -> None:
    assert decode(encode(record, "msgpack"), expect=type(record), limits=LIMITS) == record


@PROPERTY
@given(records)
def test_any_valid_record_round_trips_through_json(record: Record) -> None:
    assert decode(encode(record, "json"), expect=type(record), limits=LIMITS) == record


@PROPERTY
@given(records)
def test_reencoding_a_decoded_record_gives_the_same_bytes(record: Record) -> None:
    payload = encode(record)
    assert encode(decode(payload, limits=LIMITS)) == payload


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise_anything_but_schema_error(data: bytes) -> None:
    try:
        decode(data, limits=LIMITS)
    except SchemaError:
        pass


@settings(max_examples=300, deadline=None)
@given(records, st.data())
def test_corrupted_payloads_never_raise_anything_but_schema_error(
    record: Record, data: st.DataObject
) -> None:
    payload = bytearray(encode(record, data.draw(st.sampled_from(["msgpack", "json"]))))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(payload) - 1))
        payload[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(payload)))
    try:
        decode(bytes(payload[:cut]), limits=LIMITS)
    except SchemaError:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(BY_KIND)), st.data())
def test_random_field_values_never_raise_anything_but_schema_error(
    kind: str, data: st.DataObject
) -> None:
    """Well-formed envelope, arbitrary values under the record's real wire keys."""
    from schemas.codec import _fields

    body: dict[str, Any] = {"k": kind, "v": SCHEMA_VERSION}
    for spec in _fields(BY_KIND[kind]):
        if data.draw(st.booleans()):
            body[spec.wire_key] = data.draw(json_values)
    fmt = data.draw(st.sampled_from(["msgpack", "json"]))
    try:
        payload = (
            json.dumps(body).encode() if fmt == "json" else msgpack.packb(body, use_bin_type=True)
        )
    except (OverflowError, ValueError):  # msgpack cannot carry ints beyond 64 bits
        return
    try:
        decode(payload, limits=LIMITS)
    except SchemaError:
        pass
