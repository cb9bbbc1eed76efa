"""A device's choice of verifier (edge_node.assignment): pinning, settling, failover."""

from __future__ import annotations

import pytest

from edge_node.assignment import Assignment
from runtime.assignment import choose
from schemas import VerifierStatus

pytestmark = pytest.mark.scaleout

SETTLE_S = 5.0


def up(v: str, capacity: float = 1.0, started: int = 1) -> VerifierStatus:
    return VerifierStatus(verifier=v, online=True, capacity=capacity, started_at_ns=started)


def down(v: str) -> VerifierStatus:
    return VerifierStatus(verifier=v, online=False)


def device_won_by(winner: str, among: list[str]) -> str:
    """A device id whose rendezvous choice among ``among`` is ``winner``."""
    for i in range(1000):
        if choose(f"d{i}", dict.fromkeys(among, 1.0)) == winner:
            return f"d{i}"
    raise AssertionError("no such device")


def test_no_verifier_with_capacity_means_the_plain_topic() -> None:
    a = Assignment("d0", settle_s=SETTLE_S)
    assert a.pin("s1", 0.0) is None
    a.observe("v1", up("v1", capacity=0.0), 0.0, retained=True)  # a $share verifier
    assert a.pin("s2", 0.0) is None


def test_sessions_stay_on_their_verifier_when_another_joins() -> None:
    dev = device_won_by("v2", ["v1", "v2"])
    a = Assignment(dev, settle_s=SETTLE_S)
    a.observe("v1", up("v1"), 0.0, retained=True)
    assert a.pin("old", 1.0) == "v1"
    assert a.observe("v2", up("v2"), 10.0, retained=False) == []  # no nudge: nobody moves
    assert a.pin("old", 11.0) == "v1"  # in flight on v1: stays
    assert a.pin("new", 11.0) == "v1"  # v2 not settled yet
    assert a.pin("later", 10.0 + SETTLE_S) == "v2"  # settled: new sessions go to the winner
    assert a.pin("old", 20.0) == "v1" and a.moves == 0


def test_a_flapping_verifier_never_attracts_new_sessions() -> None:
    dev = device_won_by("v2", ["v1", "v2"])
    a = Assignment(dev, settle_s=SETTLE_S)
    a.observe("v1", up("v1"), 0.0, retained=True)
    t = 0.0
    for _ in range(10):
        a.observe("v2", up("v2", started=int(t) + 1), t, retained=False)
        assert a.pin(f"s{t}", t + SETTLE_S / 2) == "v1"
        a.observe("v2", down("v2"), t + SETTLE_S / 2, retained=False)
        t += SETTLE_S
    assert a.current(t) == "v1"


def test_retained_statuses_count_as_settled() -> None:
    dev = device_won_by("v2", ["v1", "v2"])
    a = Assignment(dev, settle_s=SETTLE_S)
    a.observe("v1", up("v1"), 0.0, retained=True)
    a.observe("v2", up("v2"), 0.0, retained=True)
    assert a.pin("s", 0.0) == "v2"


def test_an_unsettled_verifier_is_used_when_it_is_the_only_one() -> None:
    a = Assignment("d0", settle_s=SETTLE_S)
    a.observe("v1", up("v1"), 0.0, retained=False)
    assert a.pin("s", 0.1) == "v1"


def test_last_will_moves_the_leavers_sessions_and_nudges_them() -> None:
    dev = device_won_by("v2", ["v1", "v2", "v3"])
    a = Assignment(dev, settle_s=SETTLE_S)
    for v in ("v1", "v2", "v3"):
        a.observe(v, up(v), 0.0, retained=True)
    assert a.pin("s1", 0.0) == "v2" and a.pin("s2", 0.0) == "v2"
    nudged = a.observe("v2", down("v2"), 5.0, retained=False)
    assert sorted(nudged) == ["s1", "s2"]
    new = a.pinned("s1")
    assert new in ("v1", "v3") and a.pinned("s2") == new == choose(dev, {"v1": 1, "v3": 1})
    assert a.moves == 2
    # v2 comes back: the moved sessions stay where they are (no bouncing)
    assert a.observe("v2", up("v2", started=2), 6.0, retained=False) == []
    assert a.pin("s1", 20.0) == new


def test_with_nowhere_to_go_sessions_wait_for_their_verifier() -> None:
    a = Assignment("d0", settle_s=SETTLE_S)
    a.observe("v1", up("v1"), 0.0, retained=True)
    assert a.pin("s", 0.0) == "v1"
    assert a.observe("v1", down("v1"), 1.0, retained=False) == []
    assert a.pin("s", 2.0) == "v1"  # drafts queue in v1's persistent session
    assert a.observe("v1", up("v1", started=2), 3.0, retained=False) == ["s"]  # back: resend


def test_refresh_and_birth_are_not_a_restart() -> None:
    a = Assignment("d0", settle_s=SETTLE_S)
    a.observe("v1", up("v1", started=7), 0.0, retained=True)
    a.pin("s", 0.0)
    assert a.observe("v1", up("v1", started=7), 10.0, retained=False) == []  # load refresh
    assert a.observe("v1", up("v1", started=0), 11.0, retained=False) == []  # reconnect birth
    assert a.observe("v1", up("v1", started=8), 12.0, retained=False) == ["s"]  # restarted


def test_unpinned_sessions_are_nudged_when_a_verifier_comes_online() -> None:
    a = Assignment("d0", settle_s=SETTLE_S)
    assert a.pin("s", 0.0) is None
    assert a.observe("v1", up("v1"), 1.0, retained=False) == ["s"]
    assert a.pin("s", 1.0) == "v1"  # and it pins on its next send


def test_cleared_status_and_forget() -> None:
    a = Assignment("d0", settle_s=SETTLE_S)
    a.observe("v1", up("v1"), 0.0, retained=True)
    a.pin("s", 0.0)
    a.forget("s")
    assert a.pinned("s") is None
    a.observe("v1", None, 1.0, retained=False)
    assert a.verifiers == {} and a.current(1.0) is None
    with pytest.raises(ValueError):
        Assignment("d0", settle_s=-1)
