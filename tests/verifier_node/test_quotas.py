"""Per-device quotas, KV shares and the fairness glue, with plain values."""

from __future__ import annotations

import pytest

from schemas import CentralizedRequest, DraftRequest, ErrorCode, GeneratedTokens
from verifier_node.batching import Batcher
from verifier_node.central import CentralTable
from verifier_node.fairness import DeviceLimits, device_of
from verifier_node.quotas import Ask, KvShares, Quotas, Usage
from verifier_node.rows import Mode, Row
from verifier_node.sessions import Action, SessionTable

Q = Quotas(sessions=2, queued=2, context_tokens=100, central_sessions=1, central_new_tokens=50)


# -- Quotas.refuse ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("usage", "ask", "refused"),
    [
        (Usage(), Ask(new_session=True, new_tokens=10), None),
        (Usage(sessions=1), Ask(new_session=True, new_tokens=10), None),
        (Usage(sessions=2), Ask(new_session=True, new_tokens=10), "2 live sessions (quota 2)"),
        (Usage(sessions=2), Ask(new_tokens=5), None),  # a rebuild of a live session
        (Usage(context_tokens=90), Ask(new_session=True, new_tokens=10), None),
        (Usage(context_tokens=90), Ask(new_session=True, new_tokens=11), "101 context tokens"),
        (Usage(context_tokens=200), Ask(new_tokens=-10), None),  # shrinking is fine
        (Usage(queued=2), Ask(), "2 requests queued (quota 2)"),
        (Usage(queued=2), Ask(queue=False), None),
        (Usage(), Ask(new_session=True, central=True, central_new_tokens=51), "budget of 50"),
        (Usage(), Ask(new_session=True, central=True, central_new_tokens=50), None),
        (
            Usage(sessions=1, central_sessions=1),
            Ask(new_session=True, central=True, central_new_tokens=8),
            "1 live centralized sessions (quota 1)",
        ),
    ],
)
def test_refuse(usage: Usage, ask: Ask, refused: str | None) -> None:
    got = Q.refuse(usage, ask)
    if refused is None:
        assert got is None
    else:
        assert got is not None and refused in got


def test_quotas_must_be_positive() -> None:
    with pytest.raises(ValueError, match="queued must be >= 1"):
        Quotas(queued=0)


# -- KvShares -----------------------------------------------------------------------------
def test_a_device_over_its_share_releases_its_own_lru_sessions() -> None:
    kv = KvShares(share_tokens=100)
    assert kv.use("f1", "flood", 40) == []
    assert kv.use("g1", "good", 90) == []  # another device's tokens do not count
    assert kv.use("f2", "flood", 40) == []  # 80 of 100
    assert kv.use("f3", "flood", 40) == ["f1"]  # 120: f1 (least recently used) goes
    assert kv.use("f2", "flood", 40) == []  # f2 touched: now f3 is the oldest
    assert kv.use("f4", "flood", 70) == ["f3", "f2"]
    assert kv.cached_tokens("flood") == 70 and kv.cached_tokens("good") == 90


def test_kv_share_never_releases_the_batch_or_itself() -> None:
    kv = KvShares(share_tokens=50)
    kv.use("a", "d", 40)
    assert kv.use("b", "d", 40, keep={"a", "b"}) == []  # both in this round
    assert kv.use("c", "d", 60, keep={"c"}) == ["a", "b"]  # alone it is over: nothing left
    kv.forget("c")
    assert kv.cached_tokens("d") == 0


def test_kv_share_unbounded() -> None:
    kv = KvShares(share_tokens=None)
    assert [kv.use(f"s{i}", "d", 10**6) for i in range(3)] == [[], [], []]


# -- the tables and the batcher, through DeviceLimits -------------------------------------
def draft(session: str, context: list[int], draft: list[int] | None = None) -> DraftRequest:
    return DraftRequest(
        session=session,
        seq=0,
        start=len(context),
        draft=draft or [1],
        context=context,
        prompt_len=len(context),
        max_new_tokens=8,
    )


def limits(quotas: Quotas = Q, max_positions: int | None = 64) -> DeviceLimits:
    sessions = SessionTable(idle_s=60, max_positions=max_positions)
    central = CentralTable(idle_s=60, max_positions=max_positions)
    batcher: Batcher[Row] = Batcher(4, 0.0, group=device_of)
    return DeviceLimits(quotas, sessions, central, batcher, KvShares(None), error_backlog=2)


def admit(lim: DeviceLimits, device: str, req: DraftRequest, now: float = 0.0):
    adm = lim.sessions.admit(device, req, now, lim.gate)
    if adm.action is Action.VERIFY:
        assert adm.row is not None
        lim.batcher.add(adm.row.key, adm.row, now)
    return adm


def test_third_session_of_a_device_is_over_quota_others_unaffected() -> None:
    lim = limits()
    assert admit(lim, "flood", draft("a", [5, 6])).action is Action.VERIFY
    assert admit(lim, "flood", draft("b", [5, 6])).action is Action.VERIFY
    adm = admit(lim, "flood", draft("c", [5, 6]))
    assert adm.action is Action.REPLY and adm.reason == "over_quota"
    assert adm.verdict is not None and adm.verdict.code == ErrorCode.OVER_QUOTA
    assert "2 live sessions (quota 2)" in adm.verdict.message
    assert lim.sessions.get(("flood", "c")) is None  # nothing was created
    assert admit(lim, "good", draft("a", [5, 6])).action is Action.VERIFY
    assert lim.usage("flood") == Usage(sessions=2, context_tokens=4, queued=2)


def test_context_tokens_quota_counts_live_sessions_only() -> None:
    lim = limits()
    ctx = list(range(1, 61))  # 60 tokens
    assert admit(lim, "d", draft("a", ctx)).action is Action.VERIFY
    adm = admit(lim, "d", draft("b", ctx))  # 120 > 100
    assert adm.verdict is not None and adm.verdict.code == ErrorCode.OVER_QUOTA
    lim.batcher.take()
    lim.sessions.complete(("d", "a"), 0, [1], 1, 0, eos_ids={0}, now_s=1.0)  # EOS: done
    assert lim.usage("d").sessions == 0 and lim.usage("d").context_tokens == 0
    assert admit(lim, "d", draft("b", ctx)).action is Action.VERIFY


def test_expired_sessions_leave_the_quota() -> None:
    lim = limits()
    admit(lim, "d", draft("a", [5]))
    lim.batcher.take()
    lim.sessions.abort(("d", "a"), 0)
    assert lim.sessions.expire(100.0) == [("d", "a")]
    assert lim.usage("d") == Usage()


def test_context_plus_draft_beyond_positions_is_too_large() -> None:
    lim = limits(max_positions=8)
    adm = admit(lim, "d", draft("a", [1] * 6, draft=[2, 2]))  # 8: fits
    assert adm.action is Action.VERIFY
    adm = admit(lim, "d", draft("b", [1] * 6, draft=[2, 2, 2]))  # 9 > 8
    assert adm.action is Action.REPLY and adm.verdict is not None
    assert adm.verdict.code == ErrorCode.TOO_LARGE
    assert "9 tokens exceed the target's 8 positions" in adm.verdict.message


def central(session: str, prompt: list[int], max_new: int = 8) -> CentralizedRequest:
    return CentralizedRequest(session=session, prompt=prompt, max_new_tokens=max_new)


@pytest.mark.parametrize(
    ("max_new", "prompt_len", "code", "says"),
    [
        (51, 2, ErrorCode.OVER_QUOTA, "max_new_tokens 51 exceeds"),
        (8, 65, ErrorCode.TOO_LARGE, "prompt of 65 tokens exceeds the target's 64"),
    ],
)
def test_centralized_refusals(max_new: int, prompt_len: int, code: ErrorCode, says: str) -> None:
    lim = limits()
    got = lim.central.admit("d", central("c", [1] * prompt_len, max_new), 0.0, lim.gate)
    assert isinstance(got, GeneratedTokens) and got.done and got.code == code.value
    assert says in got.message


def test_second_concurrent_centralized_session_is_over_quota() -> None:
    lim = limits()
    assert not isinstance(
        lim.central.admit("d", central("c1", [1]), 0.0, lim.gate), GeneratedTokens
    )
    got = lim.central.admit("d", central("c2", [1]), 0.0, lim.gate)
    assert isinstance(got, GeneratedTokens) and got.code == ErrorCode.OVER_QUOTA.value
    lim.central.finish(("d", "c1"))
    assert not isinstance(
        lim.central.admit("d", central("c2", [1]), 0.0, lim.gate), GeneratedTokens
    )
    assert lim.usage("d").central_sessions == 1


def test_error_backlog_sheds_beyond_its_size() -> None:
    lim = limits()
    assert [lim.take_error("f") for _ in range(3)] == [True, True, False]
    assert lim.take_error("g")  # per device
    lim.error_sent("f")
    assert lim.take_error("f")


def test_kv_releases_per_device_from_rows() -> None:
    lim = limits()
    lim.kv_shares = KvShares(share_tokens=10)
    row = lambda dev, s, n: Row(key=Mode.SLED.key((dev, s)), context=[1] * n, draft=[2])  # noqa: E731
    assert lim.kv_releases([row("f", "a", 5), row("g", "a", 9)]) == []
    assert lim.kv_releases([row("f", "b", 5)]) == [Mode.SLED.key(("f", "a"))]


# -- configuration --------------------------------------------------------------------------
def test_quota_config_from_flags_env_and_checks() -> None:
    from verifier_node.config import ConfigError, VerifierConfig

    cfg = VerifierConfig.load(
        {"device_queued": 4}, env={"SLED_DEVICE_SESSIONS": "3", "SLED_DEVICE_KV_SHARE": "0.25"}
    )
    assert cfg.quotas() == Quotas(sessions=3, queued=4)
    assert cfg.device_kv_share == 0.25 and cfg.device_error_backlog == 32
    assert VerifierConfig().quotas() == Quotas()  # the documented defaults
    with pytest.raises(ConfigError, match="device_kv_share"):
        VerifierConfig(device_kv_share=0.0)
    with pytest.raises(ConfigError, match="device_central_sessions must be >= 1"):
        VerifierConfig(device_central_sessions=0)


def test_kv_share_tokens_from_the_runner() -> None:
    from types import SimpleNamespace

    from verifier_node.fairness import kv_share_tokens

    runner = SimpleNamespace(cache=SimpleNamespace(bytes_per_token=1024))
    assert kv_share_tokens(0.5, 4 << 20, runner) == 2048
    assert kv_share_tokens(0.5, 4 << 20, object()) is None  # not enforced
