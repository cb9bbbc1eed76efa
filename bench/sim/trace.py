"""Draft traces: everything a greedy edge device would send, recorded once. Pure.

With greedy decoding both models are deterministic, and a lossless verifier always
leaves the session's context equal to a prefix of the target's own greedy output
(the *reference*). So what a device drafts next depends only on *how many* reference
tokens are committed. A :class:`PromptTrace` stores, for every committed count ``i``,
the drafter's greedy *chain* after ``prompt + reference[:i]`` with the confidence of
each chain token (max softmax probability, paper eq. 1).

A simulated device replays it through the edge node's own drafting policy
(:class:`edge_node.policy.SledSession`): :func:`draft_from` feeds the policy the
chain's confidences one token at a time and adds each token it asks for, so the
threshold, ``max_draft``, EOS, budget and asynchronous-drafting rules are the
product's, not a copy. Terms as in :mod:`schemas`.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from edge_node.controller import SpeculationController
from edge_node.policy import DraftToken, PolicyConfig, RttEstimator, SledSession
from runtime.stats import ratio
from schemas import SamplingParams, Verdict


class DraftPolicy(PolicyConfig):
    """The edge node's :class:`~edge_node.policy.PolicyConfig`, built the benchmark's way:
    ``DraftPolicy(max_draft, threshold)``; other knobs by keyword.

    Dynamic drafting (paper eq. 1) with the benchmark's defaults: ``threshold = 0``
    gives fixed-length drafting of ``max_draft`` tokens.
    """

    __slots__ = ()

    def __init__(self, max_draft: int = 4, threshold: float = 0.0, **knobs: Any) -> None:
        super().__init__(threshold=threshold, max_draft=max_draft, **knobs)


@dataclass(frozen=True, slots=True)
class PromptTrace:
    """Recorded drafting of one prompt.

    ``prompt``: prompt ids ``[Lp]``. ``reference``: the target's greedy continuation
    ``[M]`` (ends at EOS or at ``max_new_tokens``). ``chains[i]``: the drafter's greedy
    continuation ``[L]`` after ``prompt + reference[:i]``, for ``i`` in ``[0, M)``;
    ``confidences[i]`` ``[L]`` the max softmax probability of each chain token.
    ``entropies[i]`` / ``margins[i]`` ``[L]``: the drafter's entropy (nats) and top-2
    probability margin at each chain token, for the adaptive speculation controller;
    empty in traces recorded before they existed (the controller then uses confidence).
    """

    prompt: list[int]
    reference: list[int]
    chains: list[list[int]]
    confidences: list[list[float]]
    max_new_tokens: int
    eos: list[int] = field(default_factory=list)
    entropies: list[list[float]] = field(default_factory=list)
    margins: list[list[float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.prompt:
            raise ValueError("empty prompt")
        for name, rows in (("entropies", self.entropies), ("margins", self.margins)):
            if rows and len(rows) != len(self.reference):
                raise ValueError(f"{len(rows)} {name} rows for {len(self.reference)} tokens")
        if len(self.chains) != len(self.reference) or len(self.confidences) != len(self.reference):
            raise ValueError(
                f"{len(self.chains)} chains / {len(self.confidences)} confidence rows "
                f"for {len(self.reference)} reference tokens"
            )
        if len(self.reference) > self.max_new_tokens:
            raise ValueError("reference longer than max_new_tokens")

    def accepted_length(self, committed: int, drafts: list[int]) -> int:
        """``accepted`` of a lossless greedy verdict for ``drafts`` (protocol rules).

        The longest prefix equal to the reference, cut so that one reference token is
        left for the target token (EOS inside the drafts, or the budget, ends there).
        """
        ref = self.reference[committed:]
        a = 0
        while a < len(drafts) and a < len(ref) and drafts[a] == ref[a]:
            a += 1
        return min(a, max(0, len(ref) - 1))

    def verdict(self, session: str, seq: int, committed: int, accepted: int) -> Verdict:
        """What a lossless greedy verifier answers when ``accepted`` of the drafts sent
        after ``committed`` reference tokens match: the next reference token."""
        n = committed + accepted + 1  # reference tokens committed after the verdict
        return Verdict(
            session=session,
            seq=seq,
            accepted=accepted,
            token=self.reference[committed + accepted],
            committed=len(self.prompt) + n,
            done=n >= len(self.reference),
        )


def new_session(
    trace: PromptTrace,
    policy: PolicyConfig,
    *,
    committed: int = 0,
    session: str = "replay",
    fingerprint: str | None = None,
    controller: SpeculationController | None = None,
    tpot_ms: float | None = None,
) -> SledSession:
    """The edge node's session state for ``trace``, ``committed`` reference tokens in.

    ``controller``: the device's speculation controller (kept across its sessions, as
    the edge node keeps it); None makes a fresh one when the policy is adaptive."""
    return SledSession(
        session=session,
        prompt=list(trace.prompt),
        max_new_tokens=trace.max_new_tokens,
        params=SamplingParams(),
        eos_ids=frozenset(trace.eos),
        config=policy,
        rtt=RttEstimator(policy),
        fingerprint=fingerprint,
        controller=controller,
        tpot_ms=tpot_ms,
        committed_ids=[*trace.prompt, *trace.reference[:committed]],
    )


def draft_from(trace: PromptTrace, session: SledSession, limit: int | None = None) -> int:
    """Draft as the edge node does, from the recorded chain; how many tokens were drafted.

    The drafter's next token after the session's pending drafts is the chain token at
    the same offset, with its recorded confidence; the policy
    (:meth:`SledSession.should_draft`) decides whether to draft it. At most ``limit``
    tokens (the time the device had), and never past the recorded chain.
    """
    i = session.generated
    chain = trace.chains[i] if i < len(trace.chains) else []
    confidences = trace.confidences[i] if chain else []
    entropies = trace.entropies[i] if chain and trace.entropies else []
    margins = trace.margins[i] if chain and trace.margins else []
    drafted = 0
    while limit is None or drafted < limit:
        j = len(session.pending)
        if j >= len(chain):
            break
        entropy = entropies[j] if j < len(entropies) else None
        margin = margins[j] if j < len(margins) else None
        if not session.should_draft(confidences[j], entropy, margin):
            break
        session.add_draft(DraftToken(chain[j]))
        drafted += 1
    return drafted


class AcceptanceCounts:
    """Rates from the ``rounds``, ``drafted`` and ``accepted`` counts of a record."""

    __slots__ = ()
    rounds: int
    drafted: int
    accepted: int

    @property
    def acceptance_rate(self) -> float:
        """Accepted / drafted tokens."""
        return ratio(self.accepted, self.drafted)

    @property
    def mean_accepted(self) -> float:
        """Mean accepted drafts per verification round."""
        return ratio(self.accepted, self.rounds)


@dataclass(frozen=True, slots=True)
class AcceptanceStats(AcceptanceCounts):
    """Greedy acceptance of one policy over traces (no timing involved)."""

    rounds: int
    drafted: int
    accepted: int
    generated: int  # committed tokens, accepted + target tokens

    @property
    def tokens_per_round(self) -> float:
        """Mean committed tokens per round (accepted + 1 target token)."""
        return self.generated / self.rounds if self.rounds else 0.0


def simulate_acceptance(traces: list[PromptTrace], policy: PolicyConfig) -> AcceptanceStats:
    """Rounds of synchronous greedy speculative decoding over each trace, counted.

    Each round the edge node's policy drafts from the trace and builds the request; a
    lossless verifier answers from the reference (:meth:`PromptTrace.verdict`).
    """
    sync = replace(policy, async_drafting=False)
    rounds = drafted = accepted = generated = 0
    for trace in traces:
        session = new_session(trace, sync)
        while not session.done and session.generated < len(trace.reference):
            draft_from(trace, session)
            pos = session.generated
            request = session.build_request(0.0)
            a = trace.accepted_length(pos, request.draft)
            session.on_verdict(trace.verdict(session.session, request.seq, pos, a), 0.0)
            rounds += 1
            drafted += len(request.draft)
            accepted += a
        generated += session.generated
    return AcceptanceStats(rounds, drafted, accepted, generated)


def oracle_token(
    rng: random.Random, true: int | None, p: float, vocab_size: int, avoid: frozenset[int]
) -> int:
    """``true`` (the target's token) with probability ``p``, else a random other token
    that is not in ``avoid``; past the reference's end (``true`` None) always random."""
    if true is not None and rng.random() < p:
        return true
    tok = rng.randrange(vocab_size)
    while tok == true or tok in avoid:
        tok = rng.randrange(vocab_size)
    return tok


def oracle_trace(
    prompt: list[int],
    reference: list[int],
    *,
    max_new_tokens: int,
    alpha: float,
    chain_len: int,
    vocab_size: int,
    seed: int,
    avoid: frozenset[int] = frozenset(),
) -> PromptTrace:
    """A trace of an *oracle drafter* that knows the target's greedy continuation.

    Each chain token is the reference token with probability ``alpha`` (independently
    per position, seeded) and otherwise a different token (never one in ``avoid``,
    e.g. EOS). Confidences are 1.0, so the policy drafts ``max_draft`` tokens.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError("alpha must lie in [0, 1]")
    rng = random.Random(seed)
    chains: list[list[int]] = []
    for i in range(len(reference)):
        chain = []
        for j in range(chain_len):
            true = reference[i + j] if i + j < len(reference) else None
            chain.append(oracle_token(rng, true, alpha, vocab_size, avoid))
        chains.append(chain)
    confidences = [[1.0] * chain_len for _ in reference]
    return PromptTrace(
        list(prompt), list(reference), chains, confidences, max_new_tokens, sorted(avoid)
    )


def expected_accepted(alpha: float, k: int) -> float:
    """Mean accepted drafts per round for i.i.d. acceptance ``alpha`` and ``k`` drafts."""
    return sum(alpha**j for j in range(1, k + 1))


def save_traces(path: Path, traces: list[PromptTrace], meta: dict[str, Any]) -> None:
    """Write traces and metadata as JSON (small: ids and rounded confidences)."""
    rows = []
    for t in traces:
        row = asdict(t)
        for name in ("confidences", "entropies", "margins"):
            row[name] = [[round(c, 5) for c in cs] for cs in getattr(t, name)]
        rows.append(row)
    path.write_text(json.dumps({"meta": meta, "traces": rows}))


def load_traces(path: Path) -> tuple[list[PromptTrace], dict[str, Any]]:
    """Read what :func:`save_traces` wrote."""
    data = json.loads(path.read_text())
    return [PromptTrace(**row) for row in data["traces"]], data["meta"]
