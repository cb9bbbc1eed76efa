"""Every message on the wire, as a frozen typed record (terms: see :mod:`schemas`).

The records live by concept; this module gathers them, so ``from schemas.messages
import X`` works for each:

* :mod:`schemas.record` — the base: :class:`Record`, :class:`Limits`,
  :class:`SamplingParams`, field checks, version and enumerations;
* :mod:`schemas.protocol` — the draft protocol, device ⇄ verifier: ``DraftRequest``,
  ``Verdict``, ``CentralizedRequest``, ``GeneratedTokens``;
* :mod:`schemas.results` — app ⇄ device: ``GenerateRequest`` (with its nested
  ``ChatMessage``), ``ResultChunk``, ``ResultFinal``;
* :mod:`schemas.status` — retained presence: ``DeviceStatus``, ``VerifierStatus``.

Hot-path records (draft, verdict) use one- or two-letter wire keys so a draft of 8
greedy tokens fits in ~100 bytes; app-facing records use full names so JSON readers
(Node-RED, ``mosquitto_sub``) see readable keys. The key of every field is in its
metadata; :mod:`schemas.codec` encodes and validates from these declarations.
"""

from __future__ import annotations

from typing import Final

# ``X as X``: re-exported, so ``from schemas.messages import X`` keeps working
from schemas.protocol import CentralizedRequest as CentralizedRequest
from schemas.protocol import DraftRequest as DraftRequest
from schemas.protocol import GeneratedTokens as GeneratedTokens
from schemas.protocol import Verdict as Verdict
from schemas.record import CHAT_ROLES as CHAT_ROLES
from schemas.record import DEFAULT_LIMITS as DEFAULT_LIMITS
from schemas.record import FINISH_REASONS as FINISH_REASONS
from schemas.record import FORMATS as FORMATS
from schemas.record import MODES as MODES
from schemas.record import NO_TOKEN as NO_TOKEN
from schemas.record import SCHEMA_VERSION as SCHEMA_VERSION
from schemas.record import Limits as Limits
from schemas.record import Record as Record
from schemas.record import SamplingParams as SamplingParams
from schemas.record import check_ident as check_ident
from schemas.record import check_ids as check_ids
from schemas.record import check_nonneg as check_nonneg
from schemas.record import key as key
from schemas.results import ChatMessage as ChatMessage
from schemas.results import GenerateRequest as GenerateRequest
from schemas.results import ResultChunk as ResultChunk
from schemas.results import ResultFinal as ResultFinal
from schemas.status import DeviceStatus as DeviceStatus
from schemas.status import VerifierStatus as VerifierStatus

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
"""Top-level messages (SamplingParams and ChatMessage only appear nested)."""

BY_KIND: Final[dict[str, type[Record]]] = {t.KIND: t for t in MESSAGE_TYPES}
