"""schemas/asyncapi.yaml must say what the code does: kinds, wire keys, types, channels.

The checks derive everything from the code (dataclass fields and their ``key`` metadata,
type hints, ``Topics`` builders, ``ErrorCode``), so a field added to a record, a renamed
wire key, a changed default or a new topic fails here until the document is updated.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any

import msgpack
import pytest
import yaml

import schemas
from schemas import (
    BY_KIND,
    FINISH_REASONS,
    FORMATS,
    MESSAGE_TYPES,
    MODES,
    SCHEMA_VERSION,
    Channel,
    ErrorCode,
    ParsedTopic,
    Record,
    Topics,
    Verdict,
    decode,
)
from schemas.messages import key

DOC_PATH = Path(schemas.__file__).parent / "asyncapi.yaml"

# Which message kinds travel on which channel (the table in schemas/topics.py).
CHANNEL_KINDS: dict[Channel, set[str]] = {
    Channel.DRAFT: {"draft", "central"},
    Channel.ASSIGNED_DRAFT: {"draft", "central"},
    Channel.VERDICT: {"verdict", "tokens"},
    Channel.OUT: {"chunk", "final"},
    Channel.REQ: {"generate"},
    Channel.DEVICE_STATUS: {"device_status"},
    Channel.VERIFIER_STATUS: {"verifier_status"},
}
RETAINED = {Channel.DEVICE_STATUS, Channel.VERIFIER_STATUS}

# Enumerated string fields: (kind, wire key) -> allowed values in the code.
ENUMS: dict[tuple[str, str], tuple[str, ...]] = {
    ("generate", "mode"): MODES,
    ("generate", "format"): FORMATS,
    ("final", "mode"): MODES,
    ("final", "finish_reason"): FINISH_REASONS,
    ("device_status", "modes"): MODES,
    ("verdict", "e"): tuple(c.value for c in ErrorCode),
    ("tokens", "e"): tuple(c.value for c in ErrorCode),
}

SAMPLE_IDS = {"prefix": "sled/v1", "device": "pi-1", "request": "r-7", "verifier": "v1"}


@cache
def doc() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(DOC_PATH.read_text())
    return loaded


def pointer(ref: str) -> Any:
    assert ref.startswith("#/"), f"only local references are used: {ref}"
    node: Any = doc()
    for part in ref[2:].split("/"):
        assert part in node, f"unresolved reference {ref}"
        node = node[part]
    return node


def deref(schema: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """Follow ``$ref`` and single-element ``allOf``; the last component name and schema."""
    name = None
    while True:
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[1]
            schema = pointer(schema["$ref"])
        elif len(schema.get("allOf", [])) == 1:
            schema = schema["allOf"][0]
        else:
            return name, schema


# -- comparing one record with its payload schema ---------------------------------------


def wire_fields(cls: type[Record]) -> list[tuple[str, dataclasses.Field[Any], Any]]:
    """(wire key, field, type hint) for every field, from the dataclass declaration."""
    hints = typing.get_type_hints(cls)
    return [
        (f.metadata.get("key", f.name), f, hints[f.name])
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
    ]


def code_shape(hint: Any) -> Any:
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return code_shape(inner)
    simple = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if hint in simple:
        return simple[hint]
    if typing.get_origin(hint) is list:
        return ("array", code_shape(typing.get_args(hint)[0]))
    if isinstance(hint, type) and issubclass(hint, Record):
        return ("object", hint.__name__)
    raise AssertionError(f"no JSON type for {hint!r}")


def doc_shape(schema: dict[str, Any]) -> Any:
    name, schema = deref(schema)
    kind = schema.get("type")
    if kind == "array":
        return ("array", doc_shape(schema["items"]))
    if kind == "object":
        return ("object", name)
    return kind


def record_mismatches(cls: type[Record], schema: dict[str, Any], *, top: bool) -> list[str]:
    """Every way the payload schema disagrees with the record; empty when they agree."""
    _, schema = deref(schema)
    where = cls.__name__
    problems: list[str] = []
    props: dict[str, Any] = schema.get("properties", {})
    fields = wire_fields(cls)
    keys = {k for k, _, _ in fields} | ({"k", "v"} if top else set())
    required = {k for k, f, _ in fields if _is_required(f)} | ({"k", "v"} if top else set())
    if set(props) != keys:
        problems.append(
            f"{where}: properties {sorted(props)} != wire keys {sorted(keys)} "
            f"(missing {sorted(keys - set(props))}, extra {sorted(set(props) - keys)})"
        )
    if set(schema.get("required", [])) != required:
        problems.append(f"{where}: required {schema.get('required')} != {sorted(required)}")
    if schema.get("type") != "object":
        problems.append(f"{where}: type must be object")
    if top:
        if props.get("k", {}).get("const") != cls.KIND:
            problems.append(f"{where}: k must be const {cls.KIND!r}")
        if props.get("v", {}).get("const") != cls.VERSION:
            problems.append(f"{where}: v must be const {cls.VERSION}")
    for wire_key, f, hint in fields:
        prop = props.get(wire_key)
        if prop is None:
            continue
        at = f"{where}.{wire_key}"
        if prop.get("title") != f.name:
            problems.append(f"{at}: title {prop.get('title')!r} != field name {f.name!r}")
        if doc_shape(prop) != code_shape(hint):
            problems.append(f"{at}: type {doc_shape(prop)} != {code_shape(hint)}")
        default = _default(f)
        if default is _NO_DEFAULT:
            if "default" in prop:
                problems.append(f"{at}: documents a default the code does not have")
        elif prop.get("default") != default or "default" not in prop:
            problems.append(f"{at}: default {prop.get('default')!r} != code default {default!r}")
    return problems


_NO_DEFAULT = object()


def _is_required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _default(f: dataclasses.Field[Any]) -> Any:
    """The default the document must show; _NO_DEFAULT for required, None and record defaults."""
    if f.default is not dataclasses.MISSING:
        return _NO_DEFAULT if f.default is None else f.default
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return _NO_DEFAULT if isinstance(value, Record) else value
    return _NO_DEFAULT


def nested_records(cls: type[Record]) -> set[type[Record]]:
    found: set[type[Record]] = set()
    for _, _, hint in wire_fields(cls):
        for arg in (hint, *typing.get_args(hint)):
            if isinstance(arg, type) and issubclass(arg, Record):
                found |= {arg} | nested_records(arg)
    return found


def message_by_kind() -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in doc()["components"]["messages"].values()}


# -- document --------------------------------------------------------------------------


def test_document_is_asyncapi_3_for_this_schema_version() -> None:
    assert doc()["asyncapi"] == "3.0.0"
    assert doc()["info"]["version"] == str(SCHEMA_VERSION)
    assert doc()["defaultContentType"] == "application/msgpack"


def test_every_reference_resolves() -> None:
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "$ref" in node:
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc())
    assert len(refs) > 30
    for ref in refs:
        pointer(ref)


# -- messages --------------------------------------------------------------------------


def test_every_message_kind_is_documented_and_nothing_else() -> None:
    documented = message_by_kind()
    assert set(documented) == set(BY_KIND)
    for kind, message in documented.items():
        assert doc()["components"]["messages"][BY_KIND[kind].__name__] is message


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.KIND)
def test_payload_schema_matches_the_record(cls: type[Record]) -> None:
    message = message_by_kind()[cls.KIND]
    assert record_mismatches(cls, message["payload"], top=True) == []


def test_nested_records_match_their_schemas() -> None:
    nested = set().union(*(nested_records(t) for t in MESSAGE_TYPES))
    assert {t.__name__ for t in nested} == {"SamplingParams"}
    for cls in nested:
        schema = doc()["components"]["schemas"][cls.__name__]
        assert record_mismatches(cls, schema, top=False) == []


@pytest.mark.parametrize(("kind", "wire_key"), sorted(ENUMS))
def test_enumerated_strings_match_the_code(kind: str, wire_key: str) -> None:
    _, payload = deref(message_by_kind()[kind]["payload"])
    _, prop = deref(payload["properties"][wire_key])
    if prop.get("type") == "array":
        _, prop = deref(prop["items"])
    assert tuple(prop["enum"]) == ENUMS[(kind, wire_key)]


def test_error_codes_match_the_code() -> None:
    schema = doc()["components"]["schemas"]["ErrorCode"]
    assert schema["enum"] == [c.value for c in ErrorCode]
    for code in ErrorCode:  # the table in the description names every code
        assert f"| {code.value} |" in schema["description"]


@pytest.mark.parametrize("kind", sorted(BY_KIND))
def test_examples_decode_as_their_message(kind: str) -> None:
    examples = message_by_kind()[kind]["examples"]
    assert examples
    for example in examples:
        record = decode(msgpack.packb(example["payload"]), expect=BY_KIND[kind])
        assert type(record) is BY_KIND[kind]


def test_the_check_catches_a_field_added_without_a_doc_update() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class VerdictPlus(Verdict):
        extra_ms: float = dataclasses.field(default=0.0, metadata=key("xm"))

    problems = record_mismatches(VerdictPlus, message_by_kind()["verdict"]["payload"], top=True)
    assert any("missing ['xm']" in p for p in problems), problems

    @dataclasses.dataclass(frozen=True, slots=True)
    class VerdictRenamed(Record):  # same fields, one wire key changed, one default changed
        KIND = "verdict"
        session: str = dataclasses.field(metadata=key("s"))
        seq: int = dataclasses.field(metadata=key("seq"))
        accepted: int = dataclasses.field(default=1, metadata=key("a"))

    problems = record_mismatches(VerdictRenamed, message_by_kind()["verdict"]["payload"], top=True)
    assert any("extra" in p and "'q'" in p for p in problems), problems
    assert any("default" in p for p in problems), problems


# -- channels and operations -------------------------------------------------------------


def _placeholders(address: str) -> set[str]:
    return set(re.findall(r"\{(\w+)\}", address))


def _concrete(address: str) -> str:
    return address.format(**{k: SAMPLE_IDS[k] for k in _placeholders(address)})


def _built(channel: Channel) -> str:
    t = Topics(SAMPLE_IDS["prefix"])
    d, r, v = SAMPLE_IDS["device"], SAMPLE_IDS["request"], SAMPLE_IDS["verifier"]
    return {
        Channel.DRAFT: t.draft(d),
        Channel.ASSIGNED_DRAFT: t.assigned_draft(d, v),
        Channel.VERDICT: t.verdict(d),
        Channel.OUT: t.out(d, r),
        Channel.REQ: t.req(d),
        Channel.DEVICE_STATUS: t.device_status(d),
        Channel.VERIFIER_STATUS: t.verifier_status(v),
    }[channel]


def test_channels_are_the_topic_layout() -> None:
    channels = doc()["channels"]
    assert set(channels) == {c.value for c in Channel}
    assert {_concrete(c["address"]) for c in channels.values()} == {_built(c) for c in Channel}


@pytest.mark.parametrize("channel", list(Channel), ids=str)
def test_channel_address_matches_the_topic_builder(channel: Channel) -> None:
    spec = doc()["channels"][channel.value]
    address = spec["address"]
    assert address.startswith("{prefix}/")
    assert _placeholders(address) == set(spec["parameters"])
    for name, param in spec["parameters"].items():
        assert param == {"$ref": f"#/components/parameters/{name}"}
    topic = _concrete(address)
    assert topic == _built(channel)
    parsed = Topics(SAMPLE_IDS["prefix"]).parse(topic)
    assert parsed.channel is channel
    expected_ids = {k: v for k, v in SAMPLE_IDS.items() if k in _placeholders(address)}
    expected_ids.pop("prefix")
    assert parsed == ParsedTopic(channel, **expected_ids)


def test_prefix_parameter_default_is_the_code_default() -> None:
    assert doc()["components"]["parameters"]["prefix"]["default"] == schemas.DEFAULT_PREFIX


@pytest.mark.parametrize("channel", list(Channel), ids=str)
def test_channel_carries_the_right_messages(channel: Channel) -> None:
    messages = doc()["channels"][channel.value]["messages"]
    kinds = {deref(m)[1]["name"] for m in messages.values()}
    assert kinds == CHANNEL_KINDS[channel]
    assert set(messages) == kinds  # channel message keys are the kinds


def test_every_kind_is_on_exactly_one_channel() -> None:
    # the assigned draft channel carries the draft channel's kinds, to one verifier
    channels = [c for c in CHANNEL_KINDS if c is not Channel.ASSIGNED_DRAFT]
    seen = [k for c in channels for k in CHANNEL_KINDS[c]]
    assert sorted(seen) == sorted(BY_KIND)


@pytest.mark.parametrize("channel", list(Channel), ids=str)
def test_each_channel_is_sent_and_received_at_qos_1(channel: Channel) -> None:
    ops = [
        op
        for op in doc()["operations"].values()
        if op["channel"]["$ref"] == f"#/channels/{channel.value}"
    ]
    assert {op["action"] for op in ops} == {"send", "receive"}
    for op in ops:
        kinds = {deref(m)[1]["name"] for m in op["messages"]}
        assert all(
            m["$ref"].startswith(f"#/channels/{channel.value}/messages/") for m in op["messages"]
        )
        assert kinds == CHANNEL_KINDS[channel]
        assert op["bindings"]["mqtt"]["qos"] == 1
        if op["action"] == "send":
            assert op["bindings"]["mqtt"]["retain"] is (channel in RETAINED)
