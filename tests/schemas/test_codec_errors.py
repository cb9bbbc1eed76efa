"""Malformed input: each case raises SchemaError with the documented code and a useful message."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest

from schemas import (
    CentralizedRequest,
    DraftRequest,
    ErrorCode,
    GeneratedTokens,
    GenerateRequest,
    Limits,
    Record,
    SchemaError,
    Verdict,
    decode,
    encode,
)

VOCAB = Limits(vocab_size=4096)


def pack(body: Any) -> bytes:
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def draft(**changes: Any) -> dict[str, Any]:
    """A valid first DraftRequest map; ``changes`` set keys, a value of ``...`` drops one."""
    body: dict[str, Any] = {
        "k": "draft",
        "v": 1,
        "s": "a1b2c3",
        "q": 0,
        "n": 3,
        "d": [5, 6],
        "c": [1, 2, 3],
        "pl": 3,
        "m": 16,
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


def later(**changes: Any) -> dict[str, Any]:
    """A valid later DraftRequest map (no context)."""
    return draft(**{"c": ..., "pl": ..., "m": ..., "n": 7, **changes})


@dataclass(frozen=True)
class Case:
    name: str
    payload: bytes
    code: ErrorCode
    says: tuple[str, ...]  # substrings of the message
    expect: type[Record] | tuple[type[Record], ...] | None = DraftRequest
    limits: Limits = field(default=VOCAB)


CASES = [
    # -- bytes and envelope -------------------------------------------------------------
    Case("garbage bytes", b"\xc1\x00", ErrorCode.MALFORMED, ("invalid msgpack",)),
    Case("truncated msgpack", pack(draft())[:-3], ErrorCode.MALFORMED, ("invalid msgpack",)),
    Case("trailing bytes", pack(draft()) + b"\x00", ErrorCode.MALFORMED, ("ExtraData",)),
    Case("empty", b"", ErrorCode.MALFORMED, ("empty payload",)),
    Case("list, not map", pack([1, 2]), ErrorCode.MALFORMED, ("must be a map", "got list")),
    Case("string, not map", pack("hello"), ErrorCode.MALFORMED, ("must be a map", "got str")),
    Case("int map keys", pack({1: 2}), ErrorCode.MALFORMED, ("invalid msgpack",)),
    Case("deep nesting", b"\x91" * 5000 + b"\x90", ErrorCode.MALFORMED, ("invalid msgpack",)),
    Case("missing version", pack(draft(v=...)), ErrorCode.BAD_VERSION, ("missing", "'v'")),
    Case("unknown version", pack(draft(v=2)), ErrorCode.BAD_VERSION, ("version 2", "speaks 1")),
    Case("version as string", pack(draft(v="1")), ErrorCode.BAD_VERSION, ("'1'",)),
    Case("version as bool", pack(draft(v=True)), ErrorCode.BAD_VERSION, ("True",)),
    Case("version as float", pack(draft(v=1.0)), ErrorCode.BAD_VERSION, ("1.0",)),
    Case("unknown kind", pack(draft(k="drafts")), ErrorCode.BAD_KIND, ("unknown", "'drafts'")),
    Case("missing kind", pack(draft(k=...)), ErrorCode.BAD_KIND, ("unknown", "None")),
    Case("nested-only kind", pack(draft(k="sampling")), ErrorCode.BAD_KIND, ("'sampling'",)),
    Case(
        "wrong kind for expect",
        encode(Verdict(session="a1", seq=0, token=3)),
        ErrorCode.BAD_KIND,
        ("'verdict' not accepted here", "expected draft"),
    ),
    Case(
        "wrong kind for a tuple expect",
        pack(draft()),
        ErrorCode.BAD_KIND,
        ("expected verdict, tokens",),
        expect=(Verdict, GeneratedTokens),
    ),
    # -- fields ------------------------------------------------------------------------
    Case(
        "missing field",
        pack(draft(d=...)),
        ErrorCode.BAD_FIELD,
        ("draft.d", "missing required field (draft)"),
    ),
    Case("null required field", pack(draft(s=None)), ErrorCode.BAD_FIELD, ("draft.s", "missing")),
    Case(
        "null non-optional field",
        pack({"k": "verdict", "v": 1, "s": "a1", "q": 0, "x": 1, "a": None}),
        ErrorCode.BAD_FIELD,
        ("verdict.a", "must not be null (accepted)"),
        expect=Verdict,
    ),
    Case(
        "string for int",
        pack(draft(q="3")),
        ErrorCode.BAD_FIELD,
        ("draft.q", "expected an integer", "str '3'"),
    ),
    Case("bool for int", pack(draft(q=True)), ErrorCode.BAD_FIELD, ("draft.q", "got bool True")),
    Case("float for int", pack(draft(n=3.0)), ErrorCode.BAD_FIELD, ("draft.n", "got float 3.0")),
    Case(
        "int for bool",
        pack({"k": "verdict", "v": 1, "s": "a1", "q": 0, "x": 1, "d": 1}),
        ErrorCode.BAD_FIELD,
        ("verdict.d", "expected a boolean", "int 1"),
        expect=Verdict,
    ),
    Case(
        "list of strings for token ids",
        pack(draft(d=["a", "b"])),
        ErrorCode.BAD_FIELD,
        ("draft.d[0]", "expected an integer", "str 'a'"),
    ),
    Case(
        "map for token ids",
        pack(draft(d={"0": 5})),
        ErrorCode.BAD_FIELD,
        ("draft.d", "expected a list", "got dict"),
    ),
    Case(
        "bytes for string",
        pack(draft(s=b"a1")),
        ErrorCode.BAD_FIELD,
        ("draft.s", "expected a string", "got bytes"),
    ),
    Case(
        "nested wrong type",
        pack(draft(p={"temperature": "hot"})),
        ErrorCode.BAD_FIELD,
        ("draft.p.temperature", "expected a number", "str 'hot'"),
    ),
    Case(
        "nested not a map",
        pack(draft(p=[0.7])),
        ErrorCode.BAD_FIELD,
        ("draft.p", "expected a map", "got list"),
    ),
    Case(
        "q rows of strings",
        pack(later(d=[5], qi=[["5"]], qp=[[1.0]])),
        ErrorCode.BAD_FIELD,
        ("draft.qi[0][0]", "expected an integer"),
    ),
    Case(
        "long value shortened in message",
        pack(draft(q="x" * 500)),
        ErrorCode.BAD_FIELD,
        ("draft.q", "xxx..."),
    ),
    # -- ranges and lengths ------------------------------------------------------------
    Case(
        "negative start",
        pack(later(n=-1)),
        ErrorCode.BAD_FIELD,
        ("draft.n", "must be >= 0, got -1"),
    ),
    Case("negative seq", pack(later(q=-5)), ErrorCode.BAD_FIELD, ("draft.q", ">= 0, got -5")),
    Case(
        "absurd start",
        pack(later(n=10**9)),
        ErrorCode.BAD_FIELD,
        ("draft.n", "start 1000000000 exceeds max context 32768"),
    ),
    Case(
        "too many draft tokens",
        pack(later(d=[1] * 65)),
        ErrorCode.TOO_LARGE,
        ("draft.d", "65 tokens exceed the limit of 64"),
    ),
    Case(
        "token id outside vocabulary",
        pack(later(d=[5, 4096])),
        ErrorCode.OUT_OF_VOCAB,
        ("draft.d[1]", "token id 4096 outside vocabulary of 4096"),
    ),
    Case(
        "negative token id",
        pack(later(d=[-1])),
        ErrorCode.OUT_OF_VOCAB,
        ("draft.d[0]", "token id -1"),
    ),
    Case(
        "context token outside vocabulary",
        pack(draft(c=[1, 99999, 3])),
        ErrorCode.OUT_OF_VOCAB,
        ("draft.c[1]", "99999"),
    ),
    Case(
        "q id outside vocabulary",
        pack(later(d=[5], qi=[[5, 5000]], qp=[[0.5, 0.5]])),
        ErrorCode.OUT_OF_VOCAB,
        ("draft.qi[0][1]", "5000"),
    ),
    Case(
        "oversize payload",
        pack(later(d=list(range(40)))),
        ErrorCode.TOO_LARGE,
        ("exceeds the limit of 64",),
        limits=Limits(max_payload_bytes=64),
    ),
    Case(
        "oversize string",
        pack({"k": "generate", "v": 1, "request": "r1", "prompt": "x" * 101}),
        ErrorCode.TOO_LARGE,
        ("generate.prompt", "101 characters exceed 100"),
        expect=GenerateRequest,
        limits=Limits(max_text_chars=100),
    ),
    Case(
        "max_new_tokens zero",
        pack(draft(m=0)),
        ErrorCode.BAD_FIELD,
        ("draft.m", "max_new_tokens 0 not in [1, 8192]"),
    ),
    Case(
        "empty centralized prompt",
        pack({"k": "central", "v": 1, "s": "a1", "c": [], "m": 4}),
        ErrorCode.BAD_FIELD,
        ("central.c", "must not be empty"),
        expect=CentralizedRequest,
    ),
    # -- draft distribution ------------------------------------------------------------
    Case(
        "q_ids without q_probs",
        pack(later(d=[5], qi=[[5]])),
        ErrorCode.BAD_FIELD,
        ("q_ids and q_probs must be sent together",),
    ),
    Case(
        "q rows != draft tokens",
        pack(later(d=[5, 6], qi=[[5]], qp=[[1.0], [1.0]])),
        ErrorCode.BAD_FIELD,
        ("1 id rows and 2 prob rows for 2 draft tokens",),
    ),
    Case(
        "q row length mismatch",
        pack(later(d=[5], qi=[[5, 6]], qp=[[1.0]])),
        ErrorCode.BAD_FIELD,
        ("draft.qi[0]", "2 ids but 1 probs"),
    ),
    Case(
        "empty q row",
        pack(later(d=[5], qi=[[]], qp=[[]])),
        ErrorCode.BAD_FIELD,
        ("draft.qi[0]", "0 ids"),
    ),
    Case(
        "probs not summing to 1",
        pack(later(d=[5], qi=[[5, 6]], qp=[[0.25, 0.25]])),
        ErrorCode.BAD_FIELD,
        ("draft.qp[0]", "sum to 0.5000, not 1"),
    ),
    Case(
        "prob above 1",
        pack(later(d=[5], qi=[[5, 6]], qp=[[1.5, -0.5]])),
        ErrorCode.BAD_FIELD,
        ("draft.qp[0]", "must lie in [0, 1]"),
    ),
    Case(
        "duplicate q ids",
        pack(later(d=[5], qi=[[5, 5]], qp=[[0.5, 0.5]])),
        ErrorCode.BAD_FIELD,
        ("draft.qi[0]", "duplicate ids"),
    ),
    Case(
        "too many q entries",
        pack(later(d=[5], qi=[list(range(65))], qp=[[1 / 65] * 65])),
        ErrorCode.TOO_LARGE,
        ("draft.qi[0]", "65 tokens exceed the limit of 64"),
    ),
    # -- context -----------------------------------------------------------------------
    Case(
        "context length != start",
        pack(draft(n=4)),
        ErrorCode.BAD_FIELD,
        ("draft.c", "context has 3 ids but start is 4"),
    ),
    Case(
        "context without prompt_len",
        pack(draft(pl=...)),
        ErrorCode.BAD_FIELD,
        ("draft.pl", "prompt_len None must be in [1, start]"),
    ),
    Case(
        "prompt_len beyond start",
        pack(draft(pl=4)),
        ErrorCode.BAD_FIELD,
        ("draft.pl", "prompt_len 4"),
    ),
    Case(
        "context without max_new_tokens",
        pack(draft(m=...)),
        ErrorCode.BAD_FIELD,
        ("draft.m", "required with context"),
    ),
    # -- numbers -----------------------------------------------------------------------
    Case(
        "NaN",
        pack(draft(p={"temperature": float("nan")})),
        ErrorCode.BAD_FIELD,
        ("draft.p.temperature", "nan is not a finite number"),
    ),
    Case(
        "infinity",
        pack(draft(p={"top_p": float("inf")})),
        ErrorCode.BAD_FIELD,
        ("draft.p.top_p", "not a finite number"),
    ),
    Case(
        "top_p zero",
        pack(draft(p={"top_p": 0.0})),
        ErrorCode.BAD_FIELD,
        ("sampling.top_p", "must be in (0, 1]"),
    ),
    Case(
        "negative temperature",
        pack(draft(p={"temperature": -1.0})),
        ErrorCode.BAD_FIELD,
        ("sampling.temperature", ">= 0"),
    ),
    # -- msgpack's own limits: refused while unpacking, before the list is built ------
    Case(
        "id list one beyond max_array_len",
        pack(draft(c=[1] * 32_769)),
        ErrorCode.TOO_LARGE,
        ("msgpack", "32769 exceeds max_array_len(32768)"),
    ),
    Case(
        "map with too many keys",
        pack({**draft(), **{f"x{i}": 0 for i in range(70)}}),
        ErrorCode.TOO_LARGE,
        ("msgpack", "exceeds max_map_len(64)"),
    ),
    Case(
        "string beyond max_str_len",
        pack(draft(s="é" * 140_000)),
        ErrorCode.TOO_LARGE,
        ("msgpack", "exceeds max_str_len(262144)"),
        limits=Limits(vocab_size=4096, max_payload_bytes=1 << 20),
    ),
    Case(
        "JSON id list beyond the list limit",
        json.dumps(draft(c=[1] * 32_769)).encode(),
        ErrorCode.TOO_LARGE,
        ("draft.c", "32769 items exceed the limit of 32768"),
    ),
    # -- hostile sampling parameters (one such row must never fail a batch) -----------
    Case(
        "top_k 2**63",
        pack(draft(p={"top_k": 2**63})),
        ErrorCode.BAD_FIELD,
        ("sampling.top_k", f"{2**63} exceeds the limit of 4096"),
    ),
    Case(
        "top_k one above the vocabulary",
        pack(draft(p={"top_k": 4097})),
        ErrorCode.BAD_FIELD,
        ("sampling.top_k", "4097 exceeds the limit of 4096"),
    ),
    Case(
        "top_k beyond int32, vocabulary unknown",
        pack(draft(p={"top_k": 2**31})),
        ErrorCode.BAD_FIELD,
        ("sampling.top_k", f"exceeds the limit of {2**31 - 1}"),
        limits=Limits(),
    ),
    Case(
        "temperature 1e-320",
        pack(draft(p={"temperature": 1e-320})),
        ErrorCode.BAD_FIELD,
        ("sampling.temperature", "must be 0 (greedy) or in [0.001, inf)"),
    ),
    Case(
        "temperature just below the minimum",
        pack(draft(p={"temperature": 0.000999})),
        ErrorCode.BAD_FIELD,
        ("sampling.temperature", "0.000999"),
    ),
    Case(
        "top_p NaN",
        pack(draft(p={"top_p": float("nan")})),
        ErrorCode.BAD_FIELD,
        ("draft.p.top_p", "not a finite number"),
    ),
    Case(
        "huge int (JSON)",
        json.dumps(draft(t=2**70)).encode(),
        ErrorCode.BAD_FIELD,
        ("draft.t", f"integer {2**70} out of range"),
    ),
    Case(
        "absurd int literal (JSON)",
        b'{"k":"draft","v":1,"q":' + b"9" * 5000 + b"}",
        ErrorCode.MALFORMED,
        ("invalid JSON", "digits"),
    ),
    Case(
        "NaN literal (JSON)",
        json.dumps(draft(p={"temperature": float("nan")})).encode(),
        ErrorCode.BAD_FIELD,
        ("draft.p.temperature", "not a finite number"),
    ),
    # -- JSON --------------------------------------------------------------------------
    Case(
        "JSON invalid",
        b'{"k": "draft", "v": 1,',
        ErrorCode.MALFORMED,
        ("invalid JSON",),
    ),
    Case("JSON invalid UTF-8", b'{"k": "\xff"}', ErrorCode.MALFORMED, ("invalid JSON",)),
    Case(
        "JSON too deep",
        b'{"k":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        ErrorCode.MALFORMED,
        ("invalid JSON", "recursion"),
        limits=Limits(max_payload_bytes=1 << 20),
    ),
    # -- ids and codes -----------------------------------------------------------------
    Case(
        "session with a slash",
        pack(later(s="a/b")),
        ErrorCode.BAD_FIELD,
        ("draft.s", "'a/b' contains characters not allowed"),
    ),
    Case(
        "session with a wildcard",
        pack(later(s="dev+")),
        ErrorCode.BAD_FIELD,
        ("draft.s", "not allowed"),
    ),
    Case("empty session", pack(later(s="")), ErrorCode.BAD_FIELD, ("draft.s", "must not be empty")),
    Case(
        "session too long",
        pack(later(s="x" * 65)),
        ErrorCode.BAD_FIELD,
        ("draft.s", "65 characters exceed the limit of 64"),
    ),
    Case(
        "unknown error code",
        pack({"k": "verdict", "v": 1, "s": "a1", "q": 0, "e": "oops"}),
        ErrorCode.BAD_FIELD,
        ("verdict.e", "unknown error code 'oops'"),
        expect=Verdict,
    ),
    Case(
        "unknown error code in tokens",
        pack({"k": "tokens", "v": 1, "s": "a1", "q": 0, "x": [], "e": "oops"}),
        ErrorCode.BAD_FIELD,
        ("tokens.e", "unknown error code 'oops'"),
        expect=GeneratedTokens,
    ),
    Case(
        "verdict without a target token",
        pack({"k": "verdict", "v": 1, "s": "a1", "q": 0}),
        ErrorCode.OUT_OF_VOCAB,
        ("verdict.x", "token id -1"),
        expect=Verdict,
    ),
    Case(
        "unknown mode",
        pack({"k": "generate", "v": 1, "request": "r1", "prompt": "hi", "mode": "turbo"}),
        ErrorCode.BAD_FIELD,
        ("generate.mode", "'turbo' is not one of sled, local, centralized"),
        expect=GenerateRequest,
    ),
    Case(
        "latency objective not positive",
        pack({"k": "generate", "v": 1, "request": "r1", "prompt": "hi", "tpot_ms": 0}),
        ErrorCode.BAD_FIELD,
        ("generate.tpot_ms", "must be finite and > 0"),
        expect=GenerateRequest,
    ),
    Case(
        "unknown finish reason",
        pack({"k": "final", "v": 1, "request": "r1", "finish_reason": "tired"}),
        ErrorCode.BAD_FIELD,
        ("final.finish_reason", "'tired'"),
        expect=None,
    ),
]


def test_there_are_at_least_twenty_cases() -> None:
    assert len(CASES) >= 20
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_malformed_input_raises_schema_error(case: Case) -> None:
    with pytest.raises(SchemaError) as err:
        decode(case.payload, expect=case.expect, limits=case.limits)
    assert err.value.code is case.code, str(err.value)
    for text in case.says:
        assert text in str(err.value), f"{text!r} not in {str(err.value)!r}"
    assert err.value.message == str(err.value)
    assert case.code.value in repr(err.value)


@pytest.mark.parametrize("payload", ["a string", 42, None])
def test_non_bytes_payload_is_malformed(payload: Any) -> None:
    with pytest.raises(SchemaError, match="payload must be bytes") as err:
        decode(payload)
    assert err.value.code is ErrorCode.MALFORMED


def test_schema_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        decode(b"")
