"""The base of every wire record: version, limits, field checks, sampling parameters.

Each record has ``KIND`` (the ``k`` tag on the wire) and ``VERSION`` (the ``v`` field).
The key of every field is in its metadata (:func:`key`); :mod:`schemas.codec` encodes
and validates from these declarations, and each record's ``check`` adds the rules types
cannot say (ranges, lengths, vocabulary).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Final

from schemas.errors import ErrorCode, SchemaError

SCHEMA_VERSION: Final = 1

MODES: Final = ("sled", "local", "centralized")
FORMATS: Final = ("msgpack", "json")
FINISH_REASONS: Final = ("stop", "length", "error", "cancelled")
CHAT_ROLES: Final = ("system", "user", "assistant")  # roles of GenerateRequest.messages

NO_TOKEN: Final = -1  # Verdict.token when there is no target token (error, resync)

MIN_TEMPERATURE: Final = 1e-3  # smallest sampling temperature; 0 (greedy) is allowed
MAX_TOP_K: Final = 2**31 - 1  # top_k fits an int32 even when the vocabulary is unknown


def key(wire_key: str) -> dict[str, str]:
    """Field metadata naming the field's key on the wire."""
    return {"key": wire_key}


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds checked on decode. Lengths are counts of tokens unless named otherwise."""

    max_payload_bytes: int = 512 * 1024  # whole encoded message, bytes
    vocab_size: int | None = None  # token ids must lie in [0, vocab_size); None = unchecked
    max_draft: int = 64  # draft tokens per request
    max_context: int = 32768  # context / prompt tokens
    max_top_k: int = 64  # entries of the truncated draft distribution per token
    max_new_tokens: int = 8192  # generation budget per request
    max_text_chars: int = 65536  # prompt or text delta; all chat message contents together
    max_messages: int = 256  # messages of one chat conversation
    max_id_chars: int = 64  # session / request / device ids
    max_map_keys: int = 64  # keys of one map (a record has fewer than 30 fields)

    @property
    def max_list_len(self) -> int:
        """The longest list any record may carry (token ids, draft rows), items."""
        return max(self.max_context, self.max_new_tokens, self.max_draft, self.max_top_k)

    def unpack_limits(self) -> dict[str, int]:
        """``msgpack.unpackb`` keyword limits: a list, map or string beyond them is
        refused while unpacking, before it is built (strings counted in UTF-8 bytes).
        The contract has no binary or extension values: a short one unpacks, so that
        the field check names it (``expected a string, got bytes``)."""
        return {
            "max_array_len": self.max_list_len,
            "max_map_len": self.max_map_keys,
            "max_str_len": 4 * self.max_text_chars,
            "max_bin_len": self.max_id_chars,
            "max_ext_len": self.max_id_chars,
        }


DEFAULT_LIMITS: Final = Limits()


def fail(where: str, msg: str, code: ErrorCode = ErrorCode.BAD_FIELD) -> SchemaError:
    """The error for field ``where`` (e.g. ``draft.d[3]``)."""
    return SchemaError(code, f"{where}: {msg}")


def check_ids(where: str, ids: list[int], limits: Limits, max_len: int) -> None:
    """Token ids: bounded length, each in [0, vocab_size)."""
    if len(ids) > max_len:
        raise fail(where, f"{len(ids)} tokens exceed the limit of {max_len}", ErrorCode.TOO_LARGE)
    vocab = limits.vocab_size
    if not ids or (min(ids) >= 0 and (vocab is None or max(ids) < vocab)):
        return  # the common case, at C speed
    for i, tok in enumerate(ids):
        if tok < 0 or (vocab is not None and tok >= vocab):
            bound = f"vocabulary of {vocab}" if vocab is not None else "non-negative range"
            raise fail(f"{where}[{i}]", f"token id {tok} outside {bound}", ErrorCode.OUT_OF_VOCAB)


def check_nonneg(where: str, value: int | float) -> None:
    if value < 0:
        raise fail(where, f"must be >= 0, got {value}")


def check_ident(where: str, value: str, limits: Limits, *, allow_empty: bool = False) -> None:
    """Session, request and device ids: short, printable, no MQTT topic characters."""
    if not value and not allow_empty:
        raise fail(where, "must not be empty")
    if len(value) > limits.max_id_chars:
        raise fail(where, f"{len(value)} characters exceed the limit of {limits.max_id_chars}")
    bad = set(value) & set("/+#\x00 ")
    if bad or not value.isprintable():
        raise fail(where, f"{value!r} contains characters not allowed in an id")


def check_choice(where: str, value: str, choices: Sequence[str]) -> None:
    """``value`` is one of ``choices`` (a mode, format or finish reason)."""
    if value not in choices:
        raise fail(where, f"{value!r} is not one of {', '.join(choices)}")


def check_budget(where: str, max_new_tokens: int, limits: Limits) -> None:
    """A generation budget in ``[1, limits.max_new_tokens]``."""
    if not 1 <= max_new_tokens <= limits.max_new_tokens:
        raise fail(where, f"max_new_tokens {max_new_tokens} not in [1, {limits.max_new_tokens}]")


def check_code(where: str, code: str | None) -> None:
    """An error code in an answer: None (no error) or an :class:`ErrorCode` value."""
    if code is not None and code not in {c.value for c in ErrorCode}:
        raise fail(where, f"unknown error code {code!r}")


class Record:
    """Base of every wire record: a ``KIND`` tag and a ``check`` of its values."""

    KIND: ClassVar[str]
    VERSION: ClassVar[int] = SCHEMA_VERSION

    def check(self, limits: Limits) -> None:
        """Semantic checks beyond types (ranges, lengths, vocabulary)."""


@dataclass(frozen=True, slots=True)
class SamplingParams(Record):
    """How tokens are chosen. ``temperature == 0`` means greedy; top_k 0 and top_p 1 are off.

    The device applies these warpers to the drafter's logits and the verifier applies
    the same warpers to the target's logits, so speculative sampling stays exact.

    Bounds (``check``), so that one request's parameters can never break a batch:

    * ``temperature`` is 0 (greedy) or in ``[MIN_TEMPERATURE, inf)``: a temperature
      in ``(0, 1e-3)`` is refused, not silently turned into greedy (dividing logits
      by 1e-320 gives inf and NaN probabilities; a device that wants greedy says 0);
    * ``top_k`` is in ``[0, vocab_size]`` (``[0, 2**31 - 1]`` when the vocabulary is
      not known), so it fits the int32/int64 tensors of the warpers;
    * ``top_p`` is a finite number in ``(0, 1]``.
    """

    KIND: ClassVar[str] = "sampling"

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def check(self, limits: Limits) -> None:
        check_nonneg("sampling.temperature", self.temperature)
        if not (self.temperature == 0.0 or MIN_TEMPERATURE <= self.temperature < math.inf):
            raise fail(
                "sampling.temperature",
                f"must be 0 (greedy) or in [{MIN_TEMPERATURE}, inf), got {self.temperature}",
            )
        check_nonneg("sampling.top_k", self.top_k)
        max_top_k = MAX_TOP_K if limits.vocab_size is None else limits.vocab_size
        if self.top_k > max_top_k:
            raise fail("sampling.top_k", f"{self.top_k} exceeds the limit of {max_top_k}")
        check_nonneg("sampling.seed", self.seed)
        if not (math.isfinite(self.top_p) and 0.0 < self.top_p <= 1.0):
            raise fail("sampling.top_p", f"must be in (0, 1] (finite), got {self.top_p}")
