"""The one codec: records ⇄ msgpack (default) or JSON bytes, validated on decode.

    payload = encode(Verdict(session="a1", seq=3, accepted=2, token=17, committed=40))
    verdict = decode(payload, expect=Verdict, limits=Limits(vocab_size=4096))

A message is a map: ``k`` (kind), ``v`` (schema version) and the record's fields under
their wire keys (see :mod:`schemas.messages`). ``None`` fields are left out. In msgpack,
floats take 5 bytes (float32) when every float of the message survives float32 exactly
(e.g. a verdict's ``load``, probabilities from a float32 softmax), else 9. Decoding
accepts JSON too (a payload starting with ``{``; no msgpack message can), so apps and
tools that only speak JSON can send requests. Everything that breaks the contract
raises :class:`~schemas.errors.SchemaError` with a message naming the field.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from array import array
from collections.abc import Mapping
from typing import Any, Final, Literal, TypeVar, overload

import msgpack

from schemas.errors import ErrorCode, SchemaError
from schemas.messages import BY_KIND, DEFAULT_LIMITS, SCHEMA_VERSION, Limits, Record

R = TypeVar("R", bound=Record)

Format = Literal["msgpack", "json"]

KIND_KEY: Final = "k"
VERSION_KEY: Final = "v"


@dataclasses.dataclass(frozen=True, slots=True)
class _FieldSpec:
    name: str
    wire_key: str
    hint: Any
    required: bool


_FIELD_CACHE: dict[type[Record], tuple[_FieldSpec, ...]] = {}


def _fields(cls: type[Record]) -> tuple[_FieldSpec, ...]:
    cached = _FIELD_CACHE.get(cls)
    if cached is not None:
        return cached
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        specs.append(_FieldSpec(f.name, f.metadata.get("key", f.name), hints[f.name], required))
    _FIELD_CACHE[cls] = tuple(specs)
    return _FIELD_CACHE[cls]


def to_map(record: Record) -> dict[str, Any]:
    """The record as the plain map that goes on the wire (without ``k``/``v``)."""
    out: dict[str, Any] = {}
    for spec in _fields(type(record)):
        value = getattr(record, spec.name)
        if value is None:
            continue
        if isinstance(value, Record):
            value = to_map(value)
        elif isinstance(value, list) and value and isinstance(value[0], Record):
            value = [to_map(v) for v in value]  # a list of records (chat messages)
        out[spec.wire_key] = value
    return out


def encode(record: Record, fmt: Format = "msgpack") -> bytes:
    """Encode a top-level record with its kind and schema version."""
    body = {KIND_KEY: record.KIND, VERSION_KEY: record.VERSION, **to_map(record)}
    if fmt == "json":
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    packed: bytes = msgpack.packb(body, use_bin_type=True, use_single_float=_single_exact(body))
    return packed


def _single_exact(value: Any) -> bool:
    """Every float in ``value`` is a float32 (so msgpack may store it in 5 bytes, exactly)."""
    if isinstance(value, float):
        value = [value]
    elif isinstance(value, dict):
        return all(_single_exact(v) for v in value.values())
    if not isinstance(value, list) or not value:
        return True
    if type(value[0]) is int:  # token ids (drafts, contexts): no float, checked at C speed
        try:
            array("q", value)
            return True
        except (TypeError, OverflowError):
            pass  # a float or a list among them, or an int beyond 64 bits: look closer
    if all(type(v) is float for v in value):  # a row of floats: compared at C speed
        try:
            return array("f", value).tolist() == value
        except OverflowError:
            return False
    return all(_single_exact(v) for v in value)


def _unpack(data: bytes, limits: Limits) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise SchemaError(ErrorCode.MALFORMED, f"payload must be bytes, got {type(data).__name__}")
    if len(data) > limits.max_payload_bytes:
        raise SchemaError(
            ErrorCode.TOO_LARGE,
            f"payload of {len(data)} bytes exceeds the limit of {limits.max_payload_bytes}",
        )
    if not data:
        raise SchemaError(ErrorCode.MALFORMED, "empty payload")
    if bytes(data[:1]) == b"{":
        try:
            return json.loads(bytes(data).decode("utf-8"))
        # ValueError covers JSONDecodeError, UnicodeDecodeError and Python's limit on
        # the digits of an integer literal (a 5000-digit number is not an int64 anyway).
        except (ValueError, RecursionError) as exc:
            raise SchemaError(ErrorCode.MALFORMED, f"invalid JSON: {exc}") from exc
    try:
        return msgpack.unpackb(
            bytes(data), raw=False, strict_map_key=True, **limits.unpack_limits()
        )
    except Exception as exc:  # msgpack raises many unrelated types for bad bytes
        if isinstance(exc, ValueError) and "exceeds max_" in str(exc):
            # msgpack's own limits: refused from the length header, before building it
            raise SchemaError(ErrorCode.TOO_LARGE, f"msgpack: {exc}") from exc
        raise SchemaError(
            ErrorCode.MALFORMED, f"invalid msgpack: {type(exc).__name__}: {exc}"
        ) from exc


def peek(data: bytes, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any] | None:
    """Best effort: the raw map of a payload that failed to :func:`decode`, else ``None``.

    For answering a bad message (which request or session it named, in which format);
    nothing in the map is validated.
    """
    try:
        body = _unpack(data, limits)
    except SchemaError:
        return None
    return body if isinstance(body, dict) else None


@overload
def decode(data: bytes, *, expect: type[R], limits: Limits = ...) -> R: ...
@overload
def decode(
    data: bytes, *, expect: tuple[type[Record], ...] | None = ..., limits: Limits = ...
) -> Record: ...


def decode(
    data: bytes,
    *,
    expect: type[Record] | tuple[type[Record], ...] | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Record:
    """Decode and validate one message; ``expect`` restricts the accepted kinds."""
    body = _unpack(data, limits)
    if not isinstance(body, dict):
        raise SchemaError(ErrorCode.MALFORMED, f"message must be a map, got {type(body).__name__}")
    version = body.get(VERSION_KEY)
    if version is None:
        raise SchemaError(ErrorCode.BAD_VERSION, "missing schema version field 'v'")
    if type(version) is not int or version != SCHEMA_VERSION:
        raise SchemaError(
            ErrorCode.BAD_VERSION,
            f"schema version {version!r} is not supported (this node speaks {SCHEMA_VERSION})",
        )
    kind = body.get(KIND_KEY)
    cls = BY_KIND.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise SchemaError(ErrorCode.BAD_KIND, f"unknown message kind {kind!r}")
    allowed = (expect,) if isinstance(expect, type) else expect
    if allowed is not None and cls not in allowed:
        names = ", ".join(t.KIND for t in allowed)
        raise SchemaError(
            ErrorCode.BAD_KIND, f"message kind {kind!r} not accepted here (expected {names})"
        )
    record = from_map(cls, body, cls.KIND, limits)
    record.check(limits)
    return record


def from_map(cls: type[R], body: Mapping[str, Any], where: str, limits: Limits) -> R:
    """Build a record from its wire map, checking every field's type."""
    kwargs: dict[str, Any] = {}
    for spec in _fields(cls):
        path = f"{where}.{spec.wire_key}"
        if spec.wire_key not in body or body[spec.wire_key] is None:
            if spec.required:
                raise SchemaError(
                    ErrorCode.BAD_FIELD, f"{path}: missing required field ({spec.name})"
                )
            if spec.wire_key in body and not _optional(spec.hint):
                raise SchemaError(ErrorCode.BAD_FIELD, f"{path}: must not be null ({spec.name})")
            continue
        kwargs[spec.name] = _convert(body[spec.wire_key], spec.hint, path, limits)
    return cls(**kwargs)


def _optional(hint: Any) -> bool:
    return type(None) in typing.get_args(hint)


def _convert(value: Any, hint: Any, path: str, limits: Limits) -> Any:
    origin = typing.get_origin(hint)
    if origin is types.UnionType or origin is typing.Union:
        if value is None:
            return None
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(value, inner[0], path, limits)
    if hint is bool:
        if type(value) is not bool:
            raise _type_error(path, "a boolean", value)
        return value
    if hint is int:
        if type(value) is not int:
            raise _type_error(path, "an integer", value)
        if not -(2**63) <= value < 2**64:
            raise SchemaError(ErrorCode.BAD_FIELD, f"{path}: integer {value} out of range")
        return value
    if hint is float:
        if type(value) not in (int, float):
            raise _type_error(path, "a number", value)
        number = float(value)
        if not math.isfinite(number):
            raise SchemaError(ErrorCode.BAD_FIELD, f"{path}: {value} is not a finite number")
        return number
    if hint is str:
        if type(value) is not str:
            raise _type_error(path, "a string", value)
        if len(value) > limits.max_text_chars:
            raise SchemaError(
                ErrorCode.TOO_LARGE,
                f"{path}: {len(value)} characters exceed {limits.max_text_chars}",
            )
        return value
    if origin is list:
        if type(value) is not list:
            raise _type_error(path, "a list", value)
        if len(value) > limits.max_list_len:  # JSON has no unpacking limits
            raise SchemaError(
                ErrorCode.TOO_LARGE,
                f"{path}: {len(value)} items exceed the limit of {limits.max_list_len}",
            )
        (item_hint,) = typing.get_args(hint)
        if item_hint is int and _int64_list(value):
            return value  # token ids: checked at C speed, no per-item path strings
        return [_convert(v, item_hint, f"{path}[{i}]", limits) for i, v in enumerate(value)]
    if isinstance(hint, type) and issubclass(hint, Record):
        if not isinstance(value, dict):
            raise _type_error(path, "a map", value)
        return from_map(hint, value, path, limits)
    raise TypeError(f"{path}: unsupported field type {hint!r}")  # a bug in messages.py


def _int64_list(value: list[Any]) -> bool:
    """Every item is an ``int`` (not a bool) in the wire's integer range."""
    return not value or (
        set(map(type, value)) == {int} and min(value) >= -(2**63) and max(value) < 2**64
    )


def _type_error(path: str, wanted: str, value: Any) -> SchemaError:
    shown = repr(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return SchemaError(
        ErrorCode.BAD_FIELD, f"{path}: expected {wanted}, got {type(value).__name__} {shown}"
    )
