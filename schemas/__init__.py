"""The wire contract of SLED over MQTT: messages, codec, topics, errors.

This package imports nothing from the nodes; both nodes import it. Records by concept:
:mod:`schemas.protocol` (device ⇄ verifier), :mod:`schemas.results` (app ⇄ device),
:mod:`schemas.status` (presence), on the base in :mod:`schemas.record`;
:mod:`schemas.messages` gathers them all.

Terms, used with one meaning in every package:

* **session** – one generation on one device, named by a session id; the verifier
  holds its state (committed ids, KV cache) between requests.
* **round** – one draft request and its verdict (resends of the request included).
* **seq** – the number of a round within its session, from 0; a resend keeps it.
* **context** – a session's committed token ids (prompt + every verified token).
* **draft** – token ids proposed by the device's drafter after the context.
* **accepted** – how many leading draft tokens the target agreed with (a count).
* **target token** – the one token the target adds after the accepted drafts: the
  **correction** (recovered) token at the first rejection, or the **bonus** token when
  every draft was accepted.
* **committed** – a COUNT of tokens: on the wire (``Verdict.committed``) the context
  length after a verdict, ``start + accepted + 1``. A list of committed token ids is
  called ``committed_ids``.
* **pending** (edge node) – draft tokens held after the committed context, sent or not.
* **unverified** – pending tokens released to the app in fallback, provisional until
  the verifier speaks.
"""

from schemas.codec import decode, encode, from_map, peek, to_map
from schemas.errors import ErrorCode, SchemaError
from schemas.messages import (
    BY_KIND,
    CHAT_ROLES,
    DEFAULT_LIMITS,
    FINISH_REASONS,
    FORMATS,
    MESSAGE_TYPES,
    MODES,
    NO_TOKEN,
    SCHEMA_VERSION,
    CentralizedRequest,
    ChatMessage,
    DeviceStatus,
    DraftRequest,
    GeneratedTokens,
    GenerateRequest,
    Limits,
    Record,
    ResultChunk,
    ResultFinal,
    SamplingParams,
    Verdict,
    VerifierStatus,
)
from schemas.tokenizer import tokenizer_fingerprint
from schemas.topics import DEFAULT_PREFIX, Channel, ParsedTopic, Topics, check_id

__all__ = [
    "BY_KIND",
    "CHAT_ROLES",
    "DEFAULT_LIMITS",
    "DEFAULT_PREFIX",
    "FINISH_REASONS",
    "FORMATS",
    "MESSAGE_TYPES",
    "MODES",
    "NO_TOKEN",
    "SCHEMA_VERSION",
    "CentralizedRequest",
    "Channel",
    "ChatMessage",
    "DeviceStatus",
    "DraftRequest",
    "ErrorCode",
    "GenerateRequest",
    "GeneratedTokens",
    "Limits",
    "ParsedTopic",
    "Record",
    "ResultChunk",
    "ResultFinal",
    "SamplingParams",
    "SchemaError",
    "Topics",
    "Verdict",
    "VerifierStatus",
    "check_id",
    "decode",
    "encode",
    "from_map",
    "peek",
    "to_map",
    "tokenizer_fingerprint",
]
