"""Hypothesis strategies for valid wire records (every value passes ``Record.check``).

``VOCAB`` is the vocabulary size the property tests decode with, so generated token ids
are also checked against a vocabulary.
"""

from __future__ import annotations

from hypothesis import strategies as st

from schemas import (
    FINISH_REASONS,
    FORMATS,
    MODES,
    NO_TOKEN,
    CentralizedRequest,
    DeviceStatus,
    DraftRequest,
    ErrorCode,
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

VOCAB = 50_000
LIMITS = Limits(vocab_size=VOCAB)

U64 = 2**64 - 1
I64_MIN = -(2**63)

# Ids allowed by check_ident: printable, no MQTT topic characters, no space.
idents = st.text(
    st.characters(categories=("L", "N", "Pc", "Pd", "Po", "S"), exclude_characters="/+#"),
    min_size=1,
    max_size=64,
)
nonneg = st.integers(0, U64)
small = st.integers(0, 10_000)
tokens = st.integers(0, VOCAB - 1)
token_lists = st.lists(tokens, max_size=24)
finite_nonneg = st.floats(min_value=0.0, max_value=1e12, allow_nan=False, allow_infinity=False)
texts = st.text(max_size=80)  # st.text() never yields surrogates, so UTF-8 always works
error_codes = st.sampled_from([c.value for c in ErrorCode])

sampling = st.builds(
    SamplingParams,
    temperature=st.just(0.0) | st.floats(min_value=1e-3, max_value=1e12),
    top_k=st.integers(0, 1000),
    top_p=st.floats(min_value=1e-6, max_value=1.0),
    seed=nonneg,
)


@st.composite
def q_rows(draw: st.DrawFn, n: int) -> tuple[list[list[int]], list[list[float]]]:
    """``n`` rows of a truncated draft distribution: unique ids, probabilities summing to 1."""
    ids: list[list[int]] = []
    probs: list[list[float]] = []
    for _ in range(n):
        row = draw(st.lists(tokens, min_size=1, max_size=8, unique=True))
        weights = draw(st.lists(st.floats(0.01, 1.0), min_size=len(row), max_size=len(row)))
        total = sum(weights)
        ids.append(row)
        probs.append([w / total for w in weights])
    return ids, probs


@st.composite
def draft_requests(draw: st.DrawFn) -> DraftRequest:
    draft = draw(token_lists)
    q_ids = q_probs = None
    if draw(st.booleans()):
        q_ids, q_probs = draw(q_rows(len(draft)))
    if draw(st.booleans()):  # first request of a session: full context
        context = draw(st.lists(tokens, min_size=1, max_size=40))
        return DraftRequest.opening(
            draw(idents),
            draw(nonneg),
            context,
            draft,
            prompt_len=draw(st.integers(1, len(context))),
            max_new_tokens=draw(st.integers(1, 8192)),
            params=draw(sampling),
            fingerprint=draw(st.text("0123456789abcdef", min_size=16, max_size=16)),
            sent_at_ns=draw(nonneg),
            q_ids=q_ids,
            q_probs=q_probs,
        )
    return DraftRequest(
        session=draw(idents),
        seq=draw(nonneg),
        start=draw(st.integers(0, 32768)),
        draft=draft,
        sent_at_ns=draw(nonneg),
        q_ids=q_ids,
        q_probs=q_probs,
        max_new_tokens=draw(st.none() | st.integers(1, 8192)),
    )


@st.composite
def verdicts(draw: st.DrawFn) -> Verdict:
    if draw(st.booleans()):
        return Verdict(
            session=draw(idents),
            seq=draw(nonneg),
            accepted=draw(small),
            token=draw(tokens),
            committed=draw(small),
            done=draw(st.booleans()),
            queue_us=draw(nonneg),
            verify_us=draw(nonneg),
        )
    return Verdict(
        session=draw(st.just("") | idents),
        seq=draw(st.integers(I64_MIN, U64)),
        token=NO_TOKEN,
        code=draw(error_codes),
        message=draw(st.none() | texts),
    )


centralized = st.builds(
    CentralizedRequest,
    session=idents,
    prompt=st.lists(tokens, min_size=1, max_size=40),
    max_new_tokens=st.integers(1, 8192),
    params=sampling,
    fingerprint=st.none() | st.text("0123456789abcdef", min_size=16, max_size=16),
    sent_at_ns=nonneg,
)

generated = st.one_of(
    st.builds(
        GeneratedTokens,
        session=idents,
        seq=nonneg,
        tokens=token_lists,
        start=small,
        done=st.booleans(),
    ),
    st.builds(
        GeneratedTokens,
        session=st.just("") | idents,
        seq=small,
        tokens=st.just([]),
        done=st.just(True),
        code=error_codes,
        message=texts,
    ),
)

generate_requests = st.builds(
    GenerateRequest,
    request=idents,
    prompt=st.text(min_size=1, max_size=200),
    max_new_tokens=st.integers(1, 8192),
    params=sampling,
    mode=st.sampled_from(MODES),
    format=st.sampled_from(FORMATS),
    sent_at_ns=nonneg,
)

chunks = st.builds(
    ResultChunk,
    request=idents,
    index=small,
    text=texts,
    tokens=token_lists,
    verified=st.booleans(),
    retract=small,
    generated=small,
    drafted=small,
    accepted=small,
    sent_at_ns=nonneg,
)

finals = st.builds(
    ResultFinal,
    request=idents,
    finish_reason=st.sampled_from(FINISH_REASONS),
    text=texts,
    tokens=token_lists,
    mode=st.sampled_from(MODES),
    prompt_tokens=small,
    completion_tokens=small,
    verified_tokens=small,
    unverified_tokens=small,
    drafted=small,
    accepted=small,
    rounds=small,
    acceptance_rate=st.floats(0.0, 1.0),
    ttft_ms=finite_nonneg,
    total_ms=finite_nonneg,
    tokens_per_s=finite_nonneg,
    error=st.none() | texts,
    sent_at_ns=nonneg,
)

device_statuses = st.builds(
    DeviceStatus,
    device=idents,
    online=st.booleans(),
    model=texts,
    fingerprint=texts,
    vocab_size=nonneg,
    modes=st.lists(st.sampled_from(MODES), max_size=3),
    sent_at_ns=nonneg,
)

verifier_statuses = st.builds(
    VerifierStatus,
    verifier=idents,
    online=st.booleans(),
    model=texts,
    fingerprint=texts,
    vocab_size=nonneg,
    max_batch=small,
    sent_at_ns=nonneg,
)

BY_TYPE: dict[type[Record], st.SearchStrategy[Record]] = {
    DraftRequest: draft_requests(),
    Verdict: verdicts(),
    CentralizedRequest: centralized,
    GeneratedTokens: generated,
    GenerateRequest: generate_requests,
    ResultChunk: chunks,
    ResultFinal: finals,
    DeviceStatus: device_statuses,
    VerifierStatus: verifier_statuses,
}
"""One strategy per top-level message type (a test checks this covers MESSAGE_TYPES)."""

records: st.SearchStrategy[Record] = st.one_of(*BY_TYPE.values())
