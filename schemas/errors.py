"""Errors of the wire contract.

Exception tree::

    SchemaError              a payload or topic that breaks the contract (one type,
    │                        with a machine-readable ``code`` and a readable message)
    └── (no subclasses: the ``code`` says which rule was broken)

``ErrorCode`` is also what a verifier puts in an error verdict, so a device learns why
its request failed with the same words the server logged.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Why a message was refused. Sent in ``Verdict.code`` and logged by the nodes."""

    MALFORMED = "malformed"  # not msgpack/JSON, or not a map
    BAD_VERSION = "bad_version"  # schema version this node does not speak
    BAD_KIND = "bad_kind"  # unknown or unexpected message kind
    BAD_FIELD = "bad_field"  # missing field, wrong type, value out of range
    OUT_OF_VOCAB = "out_of_vocab"  # a token id outside [0, vocab_size)
    TOO_LARGE = "too_large"  # payload or list longer than the configured limit
    BAD_TOPIC = "bad_topic"  # topic outside the contract's layout
    TOKENIZER_MISMATCH = "tokenizer_mismatch"  # drafter and target tokenizers differ
    NO_CHAT_TEMPLATE = "no_chat_template"  # chat messages sent to a model without a template
    RESYNC = "resync"  # the verifier lacks this session's state: resend full context
    OVERLOADED = "overloaded"  # too many sessions; try again later
    OVER_QUOTA = "over_quota"  # this device exceeds one of its per-device quotas
    INTERNAL = "internal"  # a bug on the server side; the request was not verified


class SchemaError(ValueError):
    """A payload or topic that breaks the wire contract.

    ``code`` is an :class:`ErrorCode`; ``str(err)`` says exactly what is wrong, e.g.
    ``"draft.d[3]: token id 70000 outside vocabulary of 4096"``.
    """

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"SchemaError({self.code.value!r}, {self.message!r})"
