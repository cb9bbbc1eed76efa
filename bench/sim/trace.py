"""Draft traces: everything a greedy edge device would send, recorded once. Pure.

With greedy decoding both models are deterministic, and a lossless verifier always
leaves the session's context equal to a prefix of the target's own greedy output
(the *reference*). So what a device drafts next depends only on *how many* reference
tokens are committed. A :class:`PromptTrace` stores, for every committed count ``i``,
the drafter's greedy *chain* after ``prompt + reference[:i]`` with the confidence of
each chain token (max softmax probability, paper eq. 1). A simulated device replays it:
it looks up the chain at its committed count, applies the drafting policy (threshold,
``max_draft``) and sends exactly the drafts the real device would send, at the speed
of its device profile.

Terms as in ``schemas.messages``: *draft*, *accepted*, *target token*, *committed*.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class DraftPolicy:
    """Dynamic drafting (paper eq. 1).

    Draft while the drafter's confidence in the next token is ``>= threshold``, up to
    ``max_draft`` tokens (the edge node's ``edge_node.policy.draft_stop``): a token
    whose confidence is below the threshold is not sent, so a round may carry no
    drafts at all. ``threshold = 0`` gives fixed-length drafting of ``max_draft``.
    """

    max_draft: int = 4
    threshold: float = 0.0

    def __post_init__(self) -> None:
        if self.max_draft < 0:
            raise ValueError("max_draft must be >= 0")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError("threshold must lie in [0, 1]")

    def draft_length(self, confidences: list[float]) -> int:
        """How many chain tokens to send, given the chain's confidences."""
        k = 0
        for conf in confidences[: self.max_draft]:
            if conf < self.threshold:
                break
            k += 1
        return k


@dataclass(frozen=True, slots=True)
class PromptTrace:
    """Recorded drafting of one prompt.

    ``prompt``: prompt ids ``[Lp]``. ``reference``: the target's greedy continuation
    ``[M]`` (ends at EOS or at ``max_new_tokens``). ``chains[i]``: the drafter's greedy
    continuation ``[L]`` after ``prompt + reference[:i]``, for ``i`` in ``[0, M)``;
    ``confidences[i]`` ``[L]`` the max softmax probability of each chain token.
    """

    prompt: list[int]
    reference: list[int]
    chains: list[list[int]]
    confidences: list[list[float]]
    max_new_tokens: int
    eos: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.prompt:
            raise ValueError("empty prompt")
        if len(self.chains) != len(self.reference) or len(self.confidences) != len(self.reference):
            raise ValueError(
                f"{len(self.chains)} chains / {len(self.confidences)} confidence rows "
                f"for {len(self.reference)} reference tokens"
            )
        if len(self.reference) > self.max_new_tokens:
            raise ValueError("reference longer than max_new_tokens")

    @property
    def chain_len(self) -> int:
        return min((len(c) for c in self.chains), default=0)

    def drafts(self, committed: int, policy: DraftPolicy) -> list[int]:
        """Drafts sent with ``committed`` reference tokens already verified.

        As the edge node drafts: the policy's length, never more than the generation
        budget left (``max_new_tokens - committed``), and ending at the first EOS.
        """
        if committed >= len(self.reference):
            return []
        k = policy.draft_length(self.confidences[committed])
        room = self.max_new_tokens - committed
        drafts = self.chains[committed][: min(k, room)]
        for j, tok in enumerate(drafts):
            if tok in self.eos:
                return drafts[: j + 1]
        return drafts

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


@dataclass(frozen=True, slots=True)
class AcceptanceStats:
    """Greedy acceptance of one policy over traces (no timing involved)."""

    rounds: int
    drafted: int
    accepted: int
    generated: int  # committed tokens, accepted + target tokens

    @property
    def acceptance_rate(self) -> float:
        """Accepted / drafted tokens."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_accepted(self) -> float:
        """Mean accepted drafts per verification round."""
        return self.accepted / self.rounds if self.rounds else 0.0

    @property
    def tokens_per_round(self) -> float:
        """Mean committed tokens per round (accepted + 1 target token)."""
        return self.generated / self.rounds if self.rounds else 0.0


def simulate_acceptance(traces: list[PromptTrace], policy: DraftPolicy) -> AcceptanceStats:
    """Rounds of synchronous greedy speculative decoding over each trace, counted."""
    rounds = drafted = accepted = generated = 0
    for trace in traces:
        pos = 0
        while pos < len(trace.reference):
            d = trace.drafts(pos, policy)
            a = trace.accepted_length(pos, d)
            rounds += 1
            drafted += len(d)
            accepted += a
            step = min(a + 1, len(trace.reference) - pos)
            generated += step
            pos += step
    return AcceptanceStats(rounds, drafted, accepted, generated)


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
            if true is not None and rng.random() < alpha:
                chain.append(true)
            else:
                tok = rng.randrange(vocab_size)
                while tok == true or tok in avoid:
                    tok = rng.randrange(vocab_size)
                chain.append(tok)
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
        row["confidences"] = [[round(c, 5) for c in cs] for cs in t.confidences]
        rows.append(row)
    path.write_text(json.dumps({"meta": meta, "traces": rows}))


def load_traces(path: Path) -> tuple[list[PromptTrace], dict[str, Any]]:
    """Read what :func:`save_traces` wrote."""
    data = json.loads(path.read_text())
    return [PromptTrace(**row) for row in data["traces"]], data["meta"]
