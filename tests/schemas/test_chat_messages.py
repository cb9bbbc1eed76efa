"""``GenerateRequest.messages``: a chat conversation instead of a prompt, on both codecs."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest

from schemas import (
    ChatMessage,
    ErrorCode,
    GenerateRequest,
    Limits,
    SchemaError,
    decode,
    encode,
)

CHAT = [
    ChatMessage("system", "You answer in one sentence."),
    ChatMessage("user", "What is MQTT?"),
]


def body(**fields: Any) -> dict[str, Any]:
    return {"k": "generate", "v": 1, "request": "r1", **fields}


def as_json(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields).encode()


def as_msgpack(fields: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(fields)
    return packed


@pytest.mark.parametrize("fmt", ["msgpack", "json"])
def test_messages_round_trip(fmt: Any) -> None:
    req = GenerateRequest(request="r1", messages=CHAT, max_new_tokens=8, format=fmt)
    assert decode(encode(req, fmt), expect=GenerateRequest) == req


@pytest.mark.parametrize("pack", [as_json, as_msgpack], ids=["json", "msgpack"])
def test_what_mosquitto_pub_sends_decodes(pack: Any) -> None:
    payload = pack(body(messages=[{"role": "user", "content": "hi"}], format="json"))
    req = decode(payload, expect=GenerateRequest)
    assert req.messages == [ChatMessage("user", "hi")] and req.prompt == ""


def test_json_of_a_chat_request_is_readable() -> None:
    req = GenerateRequest(request="r1", messages=CHAT[1:])
    assert json.loads(encode(req, "json"))["messages"] == [
        {"role": "user", "content": "What is MQTT?"}
    ]


def test_a_prompt_request_is_unchanged_on_the_wire() -> None:
    req = GenerateRequest(request="r1", prompt="In the beginning")
    assert "messages" not in json.loads(encode(req, "json"))  # None fields are left out
    assert decode(as_msgpack(body(prompt="hi")), expect=GenerateRequest).messages is None


CASES: list[tuple[str, dict[str, Any], ErrorCode, str, Limits]] = [
    ("neither", body(), ErrorCode.BAD_FIELD, "generate.prompt: must not be empty", Limits()),
    (
        "both",
        body(prompt="hi", messages=[{"role": "user", "content": "hi"}]),
        ErrorCode.BAD_FIELD,
        "generate: send prompt or messages, not both",
        Limits(),
    ),
    (
        "empty conversation",
        body(messages=[]),
        ErrorCode.BAD_FIELD,
        "generate.messages: must not be empty",
        Limits(),
    ),
    (
        "unknown role",
        body(messages=[{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}]),
        ErrorCode.BAD_FIELD,
        "generate.messages[1].role: 'tool' is not one of system, user, assistant",
        Limits(),
    ),
    (
        "missing content",
        body(messages=[{"role": "user"}]),
        ErrorCode.BAD_FIELD,
        "generate.messages[0].content: missing required field",
        Limits(),
    ),
    (
        "content not a string",
        body(messages=[{"role": "user", "content": 3}]),
        ErrorCode.BAD_FIELD,
        "generate.messages[0].content: expected a string, got int",
        Limits(),
    ),
    (
        "a message not a map",
        body(messages=["hi"]),
        ErrorCode.BAD_FIELD,
        "generate.messages[0]: expected a map",
        Limits(),
    ),
    (
        "messages not a list",
        body(messages="hi"),
        ErrorCode.BAD_FIELD,
        "generate.messages: expected a list",
        Limits(),
    ),
    (
        "null messages with no prompt",
        body(messages=None),
        ErrorCode.BAD_FIELD,
        "generate.prompt: must not be empty",
        Limits(),
    ),
    (
        "too many messages",
        body(messages=[{"role": "user", "content": "a"}] * 4),
        ErrorCode.TOO_LARGE,
        "generate.messages: 4 messages exceed the limit of 3",
        Limits(max_messages=3),
    ),
    (
        "one content too long",
        body(messages=[{"role": "user", "content": "x" * 11}]),
        ErrorCode.TOO_LARGE,
        "generate.messages[0].content: 11 characters exceed 10",
        Limits(max_text_chars=10),
    ),
    (
        "contents together too long",
        body(messages=[{"role": "user", "content": "x" * 6}] * 2),
        ErrorCode.TOO_LARGE,
        "generate.messages: 12 characters of content exceed 10",
        Limits(max_text_chars=10),
    ),
]


@pytest.mark.parametrize("pack", [as_json, as_msgpack], ids=["json", "msgpack"])
@pytest.mark.parametrize(
    ("fields", "code", "message", "limits"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_bad_conversations_are_refused_with_a_code(
    pack: Any, fields: dict[str, Any], code: ErrorCode, message: str, limits: Limits
) -> None:
    with pytest.raises(SchemaError) as err:
        decode(pack(fields), expect=GenerateRequest, limits=limits)
    assert err.value.code is code
    assert err.value.message.startswith(message), err.value.message


def test_empty_content_is_allowed() -> None:  # e.g. an empty system turn
    req = decode(as_json(body(messages=[{"role": "system", "content": ""}])))
    assert isinstance(req, GenerateRequest) and req.messages == [ChatMessage("system", "")]


def test_check_applies_to_records_built_in_python() -> None:
    with pytest.raises(SchemaError, match="not both"):
        GenerateRequest(request="r1", prompt="x", messages=CHAT).check(Limits())
    GenerateRequest(request="r1", messages=CHAT).check(Limits())  # valid
