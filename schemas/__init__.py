"""The wire contract of SLED over MQTT: messages, codec, topics, errors.

This package imports nothing from the nodes; both nodes import it.
"""

from schemas.codec import decode, encode, from_map, peek, to_map
from schemas.errors import ErrorCode, SchemaError
from schemas.messages import (
    BY_KIND,
    DEFAULT_LIMITS,
    FINISH_REASONS,
    FORMATS,
    MESSAGE_TYPES,
    MODES,
    NO_TOKEN,
    SCHEMA_VERSION,
    CentralizedRequest,
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
