"""Every message on the wire, as a frozen typed record.

Terms (used the same way in both nodes):

* **context** – the committed token ids of a session (prompt + every verified token).
* **draft** – token ids proposed by the device's drafter after the context.
* **accepted** – how many leading draft tokens the target agreed with.
* **target token** – one token from the target after the accepted drafts: the
  *recovered* token at the first rejection, or the *bonus* token when all were accepted.
* **committed** – the context length after a verdict: ``start + accepted + 1``.

Each record has ``KIND`` (the ``k`` tag on the wire) and ``VERSION`` (the ``v`` field).
Hot-path records (draft, verdict) use one- or two-letter wire keys so a draft of 8
greedy tokens fits in ~100 bytes; app-facing records use full names so JSON readers
(Node-RED, ``mosquitto_sub``) see readable keys. The key of every field is in its
metadata; :mod:`schemas.codec` encodes and validates from these declarations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Final

from schemas.errors import ErrorCode, SchemaError

SCHEMA_VERSION: Final = 1

MODES: Final = ("sled", "local", "centralized")
FORMATS: Final = ("msgpack", "json")
FINISH_REASONS: Final = ("stop", "length", "error", "cancelled")

NO_TOKEN: Final = -1  # Verdict.token when there is no target token (error, resync)


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
    max_text_chars: int = 65536  # prompt or text delta
    max_id_chars: int = 64  # session / request / device ids


DEFAULT_LIMITS: Final = Limits()


def _fail(where: str, msg: str, code: ErrorCode = ErrorCode.BAD_FIELD) -> SchemaError:
    return SchemaError(code, f"{where}: {msg}")


def check_ids(where: str, ids: list[int], limits: Limits, max_len: int) -> None:
    """Token ids: bounded length, each in [0, vocab_size)."""
    if len(ids) > max_len:
        raise _fail(where, f"{len(ids)} tokens exceed the limit of {max_len}", ErrorCode.TOO_LARGE)
    vocab = limits.vocab_size
    for i, tok in enumerate(ids):
        if tok < 0 or (vocab is not None and tok >= vocab):
            bound = f"vocabulary of {vocab}" if vocab is not None else "non-negative range"
            raise _fail(f"{where}[{i}]", f"token id {tok} outside {bound}", ErrorCode.OUT_OF_VOCAB)


def check_nonneg(where: str, value: int | float) -> None:
    if value < 0:
        raise _fail(where, f"must be >= 0, got {value}")


def check_ident(where: str, value: str, limits: Limits, *, allow_empty: bool = False) -> None:
    """Session, request and device ids: short, printable, no MQTT topic characters."""
    if not value and not allow_empty:
        raise _fail(where, "must not be empty")
    if len(value) > limits.max_id_chars:
        raise _fail(where, f"{len(value)} characters exceed the limit of {limits.max_id_chars}")
    bad = set(value) & set("/+#\x00 ")
    if bad or not value.isprintable():
        raise _fail(where, f"{value!r} contains characters not allowed in an id")


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
        check_nonneg("sampling.top_k", self.top_k)
        check_nonneg("sampling.seed", self.seed)
        if not 0.0 < self.top_p <= 1.0:
            raise _fail("sampling.top_p", f"must be in (0, 1], got {self.top_p}")


@dataclass(frozen=True, slots=True)
class DraftRequest(Record):
    """Device → verifier on ``…/dev/{device}/draft``: verify these draft tokens.

    The first request of a session (and any resend after a ``resync`` verdict) carries
    ``context`` (the full committed ids, ``len(context) == start``), ``params``,
    ``max_new_tokens``, ``prompt_len`` and the tokenizer ``fingerprint``. Later requests
    carry only the drafts that extend position ``start``.

    For sampling, ``q_ids[i]``/``q_probs[i]`` are the top-K ids and probabilities of the
    truncated distribution draft token ``i`` was sampled from. Without them (greedy, or a
    device that sends ids only) q is one-hot on the draft token.
    """

    KIND: ClassVar[str] = "draft"

    session: str = field(metadata=key("s"))
    seq: int = field(metadata=key("q"))
    start: int = field(metadata=key("n"))
    draft: list[int] = field(metadata=key("d"))
    sent_at_ns: int = field(default=0, metadata=key("t"))
    q_ids: list[list[int]] | None = field(default=None, metadata=key("qi"))
    q_probs: list[list[float]] | None = field(default=None, metadata=key("qp"))
    context: list[int] | None = field(default=None, metadata=key("c"))
    prompt_len: int | None = field(default=None, metadata=key("pl"))
    max_new_tokens: int | None = field(default=None, metadata=key("m"))
    params: SamplingParams | None = field(default=None, metadata=key("p"))
    fingerprint: str | None = field(default=None, metadata=key("f"))

    def check(self, limits: Limits) -> None:
        check_ident("draft.s", self.session, limits)
        check_nonneg("draft.q", self.seq)
        check_nonneg("draft.n", self.start)
        check_nonneg("draft.t", self.sent_at_ns)
        if self.start > limits.max_context:
            raise _fail("draft.n", f"start {self.start} exceeds max context {limits.max_context}")
        check_ids("draft.d", self.draft, limits, limits.max_draft)
        if (self.q_ids is None) != (self.q_probs is None):
            raise _fail("draft.qi", "q_ids and q_probs must be sent together")
        if self.q_ids is not None and self.q_probs is not None:
            if len(self.q_ids) != len(self.draft) or len(self.q_probs) != len(self.draft):
                raise _fail(
                    "draft.qi",
                    f"{len(self.q_ids)} id rows and {len(self.q_probs)} prob rows "
                    f"for {len(self.draft)} draft tokens",
                )
            for i, (ids, probs) in enumerate(zip(self.q_ids, self.q_probs, strict=True)):
                if not ids or len(ids) != len(probs):
                    raise _fail(f"draft.qi[{i}]", f"{len(ids)} ids but {len(probs)} probs")
                check_ids(f"draft.qi[{i}]", ids, limits, limits.max_top_k)
                if any(not 0.0 <= p <= 1.0 for p in probs):
                    raise _fail(f"draft.qp[{i}]", "probabilities must lie in [0, 1]")
                if abs(sum(probs) - 1.0) > 1e-3:
                    raise _fail(f"draft.qp[{i}]", f"probabilities sum to {sum(probs):.4f}, not 1")
                if len(set(ids)) != len(ids):
                    raise _fail(f"draft.qi[{i}]", "duplicate ids")
        if self.context is not None:
            check_ids("draft.c", self.context, limits, limits.max_context)
            if len(self.context) != self.start:
                raise _fail(
                    "draft.c", f"context has {len(self.context)} ids but start is {self.start}"
                )
            if self.prompt_len is None or not 1 <= self.prompt_len <= self.start:
                raise _fail("draft.pl", f"prompt_len {self.prompt_len} must be in [1, start]")
            if self.max_new_tokens is None:
                raise _fail("draft.m", "max_new_tokens is required with context")
        if (
            self.max_new_tokens is not None
            and not 1 <= self.max_new_tokens <= limits.max_new_tokens
        ):
            raise _fail(
                "draft.m",
                f"max_new_tokens {self.max_new_tokens} not in [1, {limits.max_new_tokens}]",
            )
        if self.params is not None:
            self.params.check(limits)
        if self.fingerprint is not None and len(self.fingerprint) > limits.max_id_chars:
            raise _fail("draft.f", "fingerprint too long")


@dataclass(frozen=True, slots=True)
class Verdict(Record):
    """Verifier → device on ``…/dev/{device}/verdict``: the answer to one DraftRequest.

    On success ``code`` is None, ``accepted`` draft tokens were kept, ``token`` is the
    target token and ``committed == start + accepted + 1``. ``done`` means the session
    ended (EOS or max_new_tokens) and the verifier dropped it. On failure ``code`` says
    why (``resync``: resend with full context) and ``token`` is ``NO_TOKEN``.
    ``queue_us``/``verify_us`` are server timings in microseconds.
    """

    KIND: ClassVar[str] = "verdict"

    session: str = field(metadata=key("s"))
    seq: int = field(metadata=key("q"))
    accepted: int = field(default=0, metadata=key("a"))
    token: int = field(default=NO_TOKEN, metadata=key("x"))
    committed: int = field(default=0, metadata=key("c"))
    done: bool = field(default=False, metadata=key("d"))
    code: str | None = field(default=None, metadata=key("e"))
    message: str | None = field(default=None, metadata=key("m"))
    queue_us: int = field(default=0, metadata=key("w"))
    verify_us: int = field(default=0, metadata=key("u"))

    @property
    def ok(self) -> bool:
        return self.code is None

    def check(self, limits: Limits) -> None:
        check_ident("verdict.s", self.session, limits, allow_empty=self.code is not None)
        check_nonneg("verdict.a", self.accepted)
        check_nonneg("verdict.c", self.committed)
        check_nonneg("verdict.w", self.queue_us)
        check_nonneg("verdict.u", self.verify_us)
        if self.code is None:
            check_nonneg("verdict.q", self.seq)
            check_ids("verdict.x", [self.token], limits, 1)
        elif self.code not in {c.value for c in ErrorCode}:
            raise _fail("verdict.e", f"unknown error code {self.code!r}")


@dataclass(frozen=True, slots=True)
class CentralizedRequest(Record):
    """Device → verifier on ``…/dev/{device}/draft``: generate everything on the server.

    The paper's centralized baseline. Answered by a stream of ``GeneratedTokens``.
    """

    KIND: ClassVar[str] = "central"

    session: str = field(metadata=key("s"))
    prompt: list[int] = field(metadata=key("c"))
    max_new_tokens: int = field(metadata=key("m"))
    params: SamplingParams = field(default_factory=SamplingParams, metadata=key("p"))
    fingerprint: str | None = field(default=None, metadata=key("f"))
    sent_at_ns: int = field(default=0, metadata=key("t"))

    def check(self, limits: Limits) -> None:
        check_ident("central.s", self.session, limits)
        if not self.prompt:
            raise _fail("central.c", "prompt must not be empty")
        check_ids("central.c", self.prompt, limits, limits.max_context)
        if not 1 <= self.max_new_tokens <= limits.max_new_tokens:
            raise _fail(
                "central.m",
                f"max_new_tokens {self.max_new_tokens} not in [1, {limits.max_new_tokens}]",
            )
        self.params.check(limits)
        check_nonneg("central.t", self.sent_at_ns)


@dataclass(frozen=True, slots=True)
class GeneratedTokens(Record):
    """Verifier → device on ``…/dev/{device}/verdict``: tokens of a centralized session.

    ``seq`` numbers the chunks from 0; ``done`` marks the last one. ``code``/``message``
    report an error as in ``Verdict``.
    """

    KIND: ClassVar[str] = "tokens"

    session: str = field(metadata=key("s"))
    seq: int = field(metadata=key("q"))
    tokens: list[int] = field(metadata=key("x"))
    start: int = field(default=0, metadata=key("n"))  # index of tokens[0] in the completion
    done: bool = field(default=False, metadata=key("d"))
    code: str | None = field(default=None, metadata=key("e"))
    message: str | None = field(default=None, metadata=key("m"))

    def check(self, limits: Limits) -> None:
        check_ident("tokens.s", self.session, limits, allow_empty=self.code is not None)
        check_nonneg("tokens.q", self.seq)
        check_nonneg("tokens.n", self.start)
        check_ids("tokens.x", self.tokens, limits, limits.max_new_tokens)
        if self.code is not None and self.code not in {c.value for c in ErrorCode}:
            raise _fail("tokens.e", f"unknown error code {self.code!r}")


@dataclass(frozen=True, slots=True)
class GenerateRequest(Record):
    """App → device on ``…/dev/{device}/req``: please generate text for this prompt.

    Results stream to ``…/dev/{device}/out/{request}`` in ``format`` (msgpack or json).
    """

    KIND: ClassVar[str] = "generate"

    request: str
    prompt: str
    max_new_tokens: int = 64
    params: SamplingParams = field(default_factory=SamplingParams)
    mode: str = "sled"
    format: str = "msgpack"
    sent_at_ns: int = 0

    def check(self, limits: Limits) -> None:
        check_ident("generate.request", self.request, limits)
        if not self.prompt:
            raise _fail("generate.prompt", "must not be empty")
        if len(self.prompt) > limits.max_text_chars:
            raise _fail(
                "generate.prompt",
                f"{len(self.prompt)} characters exceed {limits.max_text_chars}",
                ErrorCode.TOO_LARGE,
            )
        if not 1 <= self.max_new_tokens <= limits.max_new_tokens:
            raise _fail(
                "generate.max_new_tokens",
                f"{self.max_new_tokens} not in [1, {limits.max_new_tokens}]",
            )
        if self.mode not in MODES:
            raise _fail("generate.mode", f"{self.mode!r} is not one of {', '.join(MODES)}")
        if self.format not in FORMATS:
            raise _fail("generate.format", f"{self.format!r} is not one of {', '.join(FORMATS)}")
        self.params.check(limits)
        check_nonneg("generate.sent_at_ns", self.sent_at_ns)


@dataclass(frozen=True, slots=True)
class ResultChunk(Record):
    """Device → apps on ``…/dev/{device}/out/{request}``: a piece of generated text.

    ``verified`` is False only for text released in fallback (drafter alone, verifier
    unreachable); a chunk is never half verified. Unverified text is provisional: when
    the verifier answers again, a verified chunk with ``retract = n`` first withdraws the
    last ``n`` tokens (all of them unverified), then appends its own text. Verified text
    is never withdrawn. Counters are running totals.
    """

    KIND: ClassVar[str] = "chunk"

    request: str
    index: int
    text: str
    tokens: list[int]
    verified: bool = True
    retract: int = 0  # unverified tokens withdrawn before this chunk's text
    generated: int = 0  # completion tokens so far
    drafted: int = 0  # draft tokens sent for verification so far
    accepted: int = 0  # of which accepted
    sent_at_ns: int = 0

    def check(self, limits: Limits) -> None:
        check_ident("chunk.request", self.request, limits)
        check_nonneg("chunk.index", self.index)
        if len(self.text) > limits.max_text_chars:
            raise _fail("chunk.text", "too long", ErrorCode.TOO_LARGE)
        check_ids("chunk.tokens", self.tokens, limits, limits.max_new_tokens)
        for name in ("retract", "generated", "drafted", "accepted", "sent_at_ns"):
            check_nonneg(f"chunk.{name}", getattr(self, name))


@dataclass(frozen=True, slots=True)
class ResultFinal(Record):
    """Device → apps on ``…/dev/{device}/out/{request}``: the end of a generation.

    ``finish_reason``: ``stop`` (EOS), ``length`` (max_new_tokens), ``error`` (see
    ``error``) or ``cancelled``. Times are milliseconds; ``acceptance_rate`` is
    accepted / drafted (0 when nothing was drafted).
    """

    KIND: ClassVar[str] = "final"

    request: str
    finish_reason: str
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    mode: str = "sled"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    verified_tokens: int = 0
    unverified_tokens: int = 0
    drafted: int = 0
    accepted: int = 0
    rounds: int = 0
    acceptance_rate: float = 0.0
    ttft_ms: float = 0.0
    total_ms: float = 0.0
    tokens_per_s: float = 0.0
    error: str | None = None
    sent_at_ns: int = 0

    def check(self, limits: Limits) -> None:
        check_ident("final.request", self.request, limits)
        if self.finish_reason not in FINISH_REASONS:
            raise _fail(
                "final.finish_reason",
                f"{self.finish_reason!r} is not one of {', '.join(FINISH_REASONS)}",
            )
        if self.mode not in MODES:
            raise _fail("final.mode", f"{self.mode!r} is not one of {', '.join(MODES)}")
        check_ids("final.tokens", self.tokens, limits, limits.max_new_tokens)
        for name in (
            "prompt_tokens",
            "completion_tokens",
            "verified_tokens",
            "unverified_tokens",
            "drafted",
            "accepted",
            "rounds",
            "acceptance_rate",
            "ttft_ms",
            "total_ms",
            "tokens_per_s",
            "sent_at_ns",
        ):
            check_nonneg(f"final.{name}", getattr(self, name))


@dataclass(frozen=True, slots=True)
class DeviceStatus(Record):
    """Device → all on ``…/dev/{device}/status`` (retained; also the Last Will, online=False)."""

    KIND: ClassVar[str] = "device_status"

    device: str
    online: bool
    model: str = ""
    fingerprint: str = ""
    vocab_size: int = 0
    modes: list[str] = field(default_factory=list)
    sent_at_ns: int = 0

    def check(self, limits: Limits) -> None:
        check_ident("device_status.device", self.device, limits)
        check_nonneg("device_status.vocab_size", self.vocab_size)
        for m in self.modes:
            if m not in MODES:
                raise _fail("device_status.modes", f"{m!r} is not one of {', '.join(MODES)}")


@dataclass(frozen=True, slots=True)
class VerifierStatus(Record):
    """Verifier → all on ``…/verifier/{id}/status`` (retained; also the Last Will)."""

    KIND: ClassVar[str] = "verifier_status"

    verifier: str
    online: bool
    model: str = ""
    fingerprint: str = ""
    vocab_size: int = 0
    max_batch: int = 0
    sent_at_ns: int = 0

    def check(self, limits: Limits) -> None:
        check_ident("verifier_status.verifier", self.verifier, limits)
        check_nonneg("verifier_status.vocab_size", self.vocab_size)
        check_nonneg("verifier_status.max_batch", self.max_batch)


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
