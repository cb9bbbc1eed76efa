"""Every message on the wire, as a frozen typed record (terms: see :mod:`schemas`).

The records live by concept; this module gathers them, so ``from schemas.messages
import X`` works for each:

* :mod:`schemas.record` — the base: :class:`Record`, :class:`Limits`,
  :class:`SamplingParams`, field checks, version and enumerations;
* :mod:`schemas.protocol` — the draft protocol, device ⇄ verifier: ``DraftRequest``,
  ``Verdict``, ``CentralizedRequest``, ``GeneratedTokens``;
* :mod:`schemas.results` — app ⇄ device: ``GenerateRequest``, ``ResultChunk``,
  ``ResultFinal``;
* :mod:`schemas.status` — retained presence: ``DeviceStatus``, ``VerifierStatus``.

Hot-path records (draft, verdict) use one- or two-letter wire keys so a draft of 8
greedy tokens fits in ~100 bytes; app-facing records use full names so JSON readers
(Node-RED, ``mosquitto_sub``) see readable keys. The key of every field is in its
metadata; :mod:`schemas.codec` encodes and validates from these declarations.
"""

from __future__ import annotations

from typing import Final

from schemas.protocol import CentralizedRequest, DraftRequest, GeneratedTokens, Verdict
from schemas.record import (
    DEFAULT_LIMITS,
    FINISH_REASONS,
    FORMATS,
    MODES,
    NO_TOKEN,
    SCHEMA_VERSION,
    Limits,
    Record,
    SamplingParams,
    check_ident,
    check_ids,
    check_nonneg,
    key,
)
from schemas.results import GenerateRequest, ResultChunk, ResultFinal
from schemas.status import DeviceStatus, VerifierStatus

__all__ = [
    "BY_KIND",
    "DEFAULT_LIMITS",
    "FINISH_REASONS",
    "FORMATS",
    "MESSAGE_TYPES",
    "MODES",
    "NO_TOKEN",
    "SCHEMA_VERSION",
    "CentralizedRequest",
    "DeviceStatus",
    "DraftRequest",
    "GenerateRequest",
    "GeneratedTokens",
    "Limits",
    "Record",
    "ResultChunk",
    "ResultFinal",
    "SamplingParams",
    "Verdict",
    "VerifierStatus",
    "check_ident",
    "check_ids",
    "check_nonneg",
    "key",
]

MESSAGE_TYPES: Final[tuple[type[Record], ...]] = (
    DraftRequest,
    Verdict,
    CentralizedRequest,
    GeneratedTokens,
    GenerateRequest,
    ResultChunk,
    ResultFinal,
    DeviceStatus,
    VerifierStatus,
)
"""Top-level messages (SamplingParams only appears nested)."""

BY_KIND: Final[dict[str, type[Record]]] = {t.KIND: t for t in MESSAGE_TYPES}
