"""Session rules of docs/protocol.md with plain values."""

from __future__ import annotations

import pytest

from schemas import CentralizedRequest, DraftRequest, ErrorCode, GeneratedTokens, SamplingParams
from verifier_node.central import CentralTable
from verifier_node.sessions import (
    Action,
    SessionTable,
    apply_stop_rules,
)

EOS = 0
PROMPT = [5, 6, 7]


def first(seq: int = 0, draft: list[int] | None = None, **kw) -> DraftRequest:
    context = kw.pop("context", PROMPT)
    return DraftRequest(
        session="s1",
        seq=seq,
        start=len(context),
        draft=draft if draft is not None else [1, 2],
        context=context,
        prompt_len=kw.pop("prompt_len", len(PROMPT)),
        max_new_tokens=kw.pop("max_new_tokens", 10),
        params=SamplingParams(),
        fingerprint=kw.pop("fingerprint", "fp"),
    )


def nxt(seq: int, start: int, draft: list[int] | None = None) -> DraftRequest:
    return DraftRequest(session="s1", seq=seq, start=start, draft=draft or [3])


def table() -> SessionTable:
    return SessionTable(idle_s=60, fingerprint="fp")


def verify(t: SessionTable, req: DraftRequest, accepted: int, token: int, now: float = 0.0):
    adm = t.admit("dev", req, now)
    assert adm.action is Action.VERIFY, adm
    verdict, _ = t.complete(
        ("dev", "s1"), req.seq, req.draft, accepted, token, eos_ids={EOS}, now_s=now
    )
    return verdict


# -- stop rules -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("draft", "accepted", "token", "generated", "expected"),
    [
        ([1, 2, 3], 3, 4, 0, (3, 4, False, None)),  # all accepted + bonus
        ([1, 2, 3], 1, 9, 0, (1, 9, False, None)),  # mismatch at position 1
        ([1, EOS, 3], 3, 4, 0, (1, EOS, True, "stop")),  # EOS inside the accepted drafts
        ([1, 2, 3], 1, EOS, 0, (1, EOS, True, "stop")),  # the target token is EOS
        ([1, 2, 3], 3, 4, 8, (1, 2, True, "length")),  # 2 tokens of budget left
        ([1, 2, 3], 3, 4, 9, (0, 1, True, "length")),  # 1 token left: the first draft
        ([1, 2, 3], 0, 7, 9, (0, 7, True, "length")),  # budget exactly used up
        ([1, 2, 3], 2, 4, 7, (2, 4, True, "length")),  # a + 1 == room: exactly used up
        ([EOS, 2], 2, 4, 9, (0, EOS, True, "stop")),  # EOS and budget agree
    ],
)
def test_stop_rules(draft, accepted, token, generated, expected) -> None:
    stop = apply_stop_rules(
        draft, accepted, token, eos_ids={EOS}, generated=generated, max_new_tokens=10
    )
    assert (stop.accepted, stop.token, stop.done, stop.finish) == expected


# -- admission --------------------------------------------------------------------------
def test_first_request_then_next() -> None:
    t = table()
    v0 = verify(t, first(draft=[1, 2]), accepted=1, token=9)
    assert (v0.accepted, v0.token, v0.committed, v0.done) == (1, 9, 5, False)
    v1 = verify(t, nxt(1, start=5, draft=[3]), accepted=1, token=4)
    assert v1.committed == 7
    assert t.get(("dev", "s1")).committed_ids == [*PROMPT, 1, 9, 3, 4]


def test_duplicate_gets_the_stored_verdict_and_no_verification() -> None:
    t = table()
    v0 = verify(t, first(), accepted=2, token=9)
    again = t.admit("dev", first(), 1.0)
    assert again.action is Action.REPLY and again.verdict == v0
    # A resend after a timeout with more drafts: still the stored verdict.
    longer = t.admit("dev", nxt(0, start=3, draft=[1, 2, 3, 4]), 1.0)
    assert longer.action is Action.REPLY and longer.verdict == v0


def test_duplicate_while_in_flight_is_dropped() -> None:
    t = table()
    assert t.admit("dev", first(), 0.0).action is Action.VERIFY
    assert t.admit("dev", first(), 0.0).action is Action.DROP


def test_stale_is_dropped() -> None:
    t = table()
    verify(t, first(), 2, 9)
    verify(t, nxt(1, start=6), 1, 4)
    adm = t.admit("dev", first(), 0.0)  # seq 0 < last seq 1
    assert adm.action is Action.DROP and adm.reason == "stale"


def test_unknown_session_gets_resync() -> None:
    adm = table().admit("dev", nxt(4, start=20), 0.0)
    assert adm.action is Action.REPLY and adm.verdict.code == ErrorCode.RESYNC


@pytest.mark.parametrize(("seq", "start"), [(2, 6), (1, 5)])  # gap; start mismatch
def test_gap_or_start_mismatch_gets_resync(seq: int, start: int) -> None:
    t = table()
    verify(t, first(), 2, 9)  # committed 6
    adm = t.admit("dev", nxt(seq, start=start), 0.0)
    assert adm.action is Action.REPLY and adm.verdict.code == ErrorCode.RESYNC


def test_resync_then_resend_with_context_rebuilds() -> None:
    t = table()
    adm = t.admit("dev", nxt(7, start=10), 0.0)
    assert adm.verdict.code == ErrorCode.RESYNC
    ctx = [*PROMPT, 1, 2, 3, 4, 5, 6, 7]
    req = DraftRequest(
        session="s1",
        seq=7,
        start=len(ctx),
        draft=[8],
        context=ctx,
        prompt_len=3,
        max_new_tokens=10,
    )
    v = verify(t, req, 1, 9)
    assert v.seq == 7 and v.committed == len(ctx) + 2 and not v.done
    assert t.get(("dev", "s1")).generated == 9


def test_context_request_rebuilds_a_known_session() -> None:
    t = table()
    verify(t, first(), 2, 9)
    ctx = [*PROMPT, 1]
    req = DraftRequest(
        session="s1", seq=1, start=4, draft=[], context=ctx, prompt_len=3, max_new_tokens=10
    )
    adm = t.admit("dev", req, 0.0)
    assert adm.action is Action.VERIFY and adm.reason == "rebuilt"
    assert adm.session.committed_ids == ctx


def test_tokenizer_mismatch() -> None:
    adm = table().admit("dev", first(fingerprint="other"), 0.0)
    assert adm.verdict.code == ErrorCode.TOKENIZER_MISMATCH


def test_sessions_are_keyed_by_device() -> None:
    t = table()
    assert t.admit("dev-a", first(), 0.0).action is Action.VERIFY
    assert t.admit("dev-b", first(), 0.0).action is Action.VERIFY  # same session id


def test_done_session_keeps_its_verdict_until_idle_expiry() -> None:
    t = table()
    v = verify(t, first(draft=[1, EOS]), accepted=2, token=4, now=10.0)
    assert v.done and v.token == EOS
    assert t.num_active == 0
    assert t.admit("dev", first(draft=[1, EOS]), 20.0).verdict == v  # duplicate
    after = t.admit("dev", nxt(1, start=v.committed), 20.0)
    assert after.verdict.code == ErrorCode.BAD_FIELD
    assert t.expire(79.0) == []
    assert t.expire(80.0) == [("dev", "s1")]
    assert t.admit("dev", first(draft=[1, EOS]), 81.0).action is Action.VERIFY  # fresh


def test_budget_ends_the_session() -> None:
    t = table()
    v = verify(t, first(draft=[1, 2, 3], max_new_tokens=2), accepted=3, token=4)
    assert (v.accepted, v.token, v.done, v.committed) == (1, 2, True, 5)


def test_abort_lets_the_device_resend() -> None:
    t = table()
    req = first()
    assert t.admit("dev", req, 0.0).action is Action.VERIFY
    t.abort(("dev", "s1"), 0)
    assert t.admit("dev", req, 0.0).action is Action.VERIFY


def test_in_flight_sessions_never_expire() -> None:
    t = table()
    t.admit("dev", first(), 0.0)
    assert t.expire(1e6) == []


# -- centralized --------------------------------------------------------------------------
def test_central_session_streams_and_ignores_duplicates() -> None:
    t = CentralTable(idle_s=5, fingerprint="fp")
    req = CentralizedRequest(session="c1", prompt=[5, 6], max_new_tokens=3, fingerprint="fp")
    s = t.admit("dev", req, 0.0)
    assert s is not None and not isinstance(s, GeneratedTokens)
    assert t.admit("dev", req, 0.0) is None
    chunks = [t.complete(("dev", "c1"), tok, eos_ids={EOS}, now_s=1.0) for tok in (7, 8, 9)]
    assert [(c.seq, c.start, c.tokens, c.done) for c in chunks] == [
        (0, 0, [7], False),
        (1, 1, [8], False),
        (2, 2, [9], True),
    ]
    assert t.expire(5.9) == [] and t.expire(6.0) == [("dev", "c1")]


def test_central_eos_and_mismatch() -> None:
    t = CentralTable(idle_s=5, fingerprint="fp")
    t.admit("dev", CentralizedRequest(session="c1", prompt=[5], max_new_tokens=9), 0.0)
    assert t.complete(("dev", "c1"), EOS, eos_ids={EOS}, now_s=0.0).done
    bad = CentralizedRequest(session="c2", prompt=[5], max_new_tokens=9, fingerprint="x")
    got = t.admit("dev", bad, 0.0)
    assert isinstance(got, GeneratedTokens) and got.code == ErrorCode.TOKENIZER_MISMATCH


def test_verdicts_carry_the_cost_hints_when_they_move() -> None:
    t = table()
    sent = []
    for seq, (token_us, row_us) in enumerate([(0, 0), (4000, 20000), (4300, 19000), (4500, 20000)]):
        req = first() if seq == 0 else nxt(seq, len(PROMPT) + seq)
        assert t.admit("dev", req, 0.0).action is Action.VERIFY
        hints = (10, 200_000, 0.5, token_us, row_us)
        verdict, _ = t.complete(
            ("dev", "s1"), seq, req.draft, 0, 9, eos_ids={EOS}, now_s=0.0, hints=hints
        )
        sent.append((verdict.token_us, verdict.row_us))
    # unknown: none; first known: sent; within 10 %: not again; 4500 vs 4000: sent
    assert sent == [(None, None), (4000, 20000), (None, None), (4500, 20000)]
