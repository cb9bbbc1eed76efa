"""Topic builders and the parser: one layout, round trips, and rejected ids."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import DEFAULT_PREFIX, Channel, ErrorCode, ParsedTopic, SchemaError, Topics, check_id

T = Topics()


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        (T.draft("pi-1"), "sled/v1/dev/pi-1/draft"),
        (T.assigned_draft("pi-1", "v2"), "sled/v1/dev/pi-1/draft/v2"),
        (T.drafts_for("v2"), "sled/v1/dev/+/draft/v2"),
        (T.verdict("pi-1"), "sled/v1/dev/pi-1/verdict"),
        (T.out("pi-1", "r-7"), "sled/v1/dev/pi-1/out/r-7"),
        (T.req("pi-1"), "sled/v1/dev/pi-1/req"),
        (T.device_status("pi-1"), "sled/v1/dev/pi-1/status"),
        (T.verifier_status("v1"), "sled/v1/verifier/v1/status"),
        (T.all_drafts(), "sled/v1/dev/+/draft"),
        (T.all_drafts("verifiers"), "$share/verifiers/sled/v1/dev/+/draft"),
        (T.all_out(), "sled/v1/dev/+/out/+"),
        (T.all_out("pi-1"), "sled/v1/dev/pi-1/out/+"),
        (T.all_device_status(), "sled/v1/dev/+/status"),
        (T.all_verifier_status(), "sled/v1/verifier/+/status"),
        (Topics("site-a/sled").draft("jetson_2"), "site-a/sled/dev/jetson_2/draft"),
    ],
)
def test_builders(topic: str, expected: str) -> None:
    assert topic == expected


def test_default_prefix() -> None:
    assert DEFAULT_PREFIX == "sled/v1" and Topics().prefix == DEFAULT_PREFIX


@pytest.mark.parametrize(
    ("topic", "parsed"),
    [
        ("sled/v1/dev/pi-1/draft", ParsedTopic(Channel.DRAFT, device="pi-1")),
        (
            "sled/v1/dev/pi-1/draft/v2",
            ParsedTopic(Channel.ASSIGNED_DRAFT, device="pi-1", verifier="v2"),
        ),
        ("sled/v1/dev/pi-1/verdict", ParsedTopic(Channel.VERDICT, device="pi-1")),
        ("sled/v1/dev/pi-1/req", ParsedTopic(Channel.REQ, device="pi-1")),
        ("sled/v1/dev/pi-1/status", ParsedTopic(Channel.DEVICE_STATUS, device="pi-1")),
        ("sled/v1/dev/a.b/out/r_1", ParsedTopic(Channel.OUT, device="a.b", request="r_1")),
        ("sled/v1/verifier/v-9/status", ParsedTopic(Channel.VERIFIER_STATUS, verifier="v-9")),
    ],
)
def test_parse(topic: str, parsed: ParsedTopic) -> None:
    assert T.parse(topic) == parsed


ids = st.text("ABCXYZabcxyz0189_.-", min_size=1, max_size=64)


@settings(max_examples=100, deadline=None)
@given(device=ids, request=ids, verifier=ids)
def test_build_then_parse_round_trips(device: str, request: str, verifier: str) -> None:
    topics = Topics("x/y")
    assert topics.parse(topics.draft(device)) == ParsedTopic(Channel.DRAFT, device=device)
    assert topics.parse(topics.verdict(device)) == ParsedTopic(Channel.VERDICT, device=device)
    assert topics.parse(topics.assigned_draft(device, verifier)) == ParsedTopic(
        Channel.ASSIGNED_DRAFT, device=device, verifier=verifier
    )
    assert topics.parse(topics.req(device)) == ParsedTopic(Channel.REQ, device=device)
    assert topics.parse(topics.device_status(device)).channel is Channel.DEVICE_STATUS
    assert topics.parse(topics.out(device, request)) == ParsedTopic(
        Channel.OUT, device=device, request=request
    )
    assert topics.parse(topics.verifier_status(verifier)) == ParsedTopic(
        Channel.VERIFIER_STATUS, verifier=verifier
    )


def test_every_channel_has_a_builder() -> None:
    built = {
        Channel.DRAFT: T.draft("d"),
        Channel.ASSIGNED_DRAFT: T.assigned_draft("d", "v"),
        Channel.VERDICT: T.verdict("d"),
        Channel.OUT: T.out("d", "r"),
        Channel.REQ: T.req("d"),
        Channel.DEVICE_STATUS: T.device_status("d"),
        Channel.VERIFIER_STATUS: T.verifier_status("v"),
    }
    assert set(built) == set(Channel)
    assert {T.parse(t).channel for t in built.values()} == set(Channel)


@pytest.mark.parametrize(
    "bad_id", ["", "a/b", "+", "#", "pi+1", "pi#", "a b", "ü", "x" * 65, "$SYS", "a\x00"]
)
def test_builders_reject_bad_ids(bad_id: str) -> None:
    for build in (T.draft, T.verdict, T.req, T.device_status, T.verifier_status):
        with pytest.raises(SchemaError) as err:
            build(bad_id)
        assert err.value.code is ErrorCode.BAD_TOPIC
        assert "must be 1-64 characters" in str(err.value)
    with pytest.raises(SchemaError, match="request id"):
        T.out("pi-1", bad_id)
    with pytest.raises(SchemaError, match="verifier id"):
        T.assigned_draft("pi-1", bad_id)
    with pytest.raises(SchemaError, match="share group id"):
        T.all_drafts(share_group=bad_id or "a/b")


def test_check_id_accepts_64_characters_and_names_the_id() -> None:
    assert check_id("device", "x" * 64) == "x" * 64
    with pytest.raises(SchemaError, match="device id 'a/b'"):
        check_id("device", "a/b")


@pytest.mark.parametrize(
    ("topic", "says"),
    [
        ("other/v1/dev/pi-1/draft", "not under prefix 'sled/v1'"),
        ("sled/v2/dev/pi-1/draft", "not under prefix"),
        ("sled/v1dev/pi-1/draft", "not under prefix"),
        ("/sled/v1/dev/pi-1/draft", "not under prefix"),
        ("$share/g/sled/v1/dev/+/draft", "not under prefix"),
        ("sled/v1/dev/+/draft", "device id '+'"),
        ("sled/v1/dev/#", "not part of the layout"),
        ("sled/v1/dev/pi-1/draft/v1/extra", "not part of the layout"),
        ("sled/v1/dev/pi-1/drafts", "not part of the layout"),
        ("sled/v1/dev/pi-1", "not part of the layout"),
        ("sled/v1/dev//draft", "device id ''"),
        ("sled/v1/dev/pi-1/out", "not part of the layout"),
        ("sled/v1/dev/pi-1/out/+", "request id '+'"),
        ("sled/v1/verifier/v1/verdict", "not part of the layout"),
        ("sled/v1/verifier/#/status", "verifier id '#'"),
        ("sled/v1/", "not part of the layout"),
    ],
)
def test_parse_rejects_topics_outside_the_layout(topic: str, says: str) -> None:
    with pytest.raises(SchemaError) as err:
        T.parse(topic)
    assert err.value.code is ErrorCode.BAD_TOPIC
    assert says in str(err.value)


@pytest.mark.parametrize("prefix", ["", "/sled", "sled/", "sled/+", "sled/#", "$SYS/x", "a\x00"])
def test_bad_prefixes_are_rejected(prefix: str) -> None:
    with pytest.raises(SchemaError) as err:
        Topics(prefix)
    assert err.value.code is ErrorCode.BAD_TOPIC


def test_shared_subscription_filter_is_not_a_concrete_topic() -> None:
    """A ``$share`` filter is for subscribing; the parser only takes concrete topics."""
    shared = T.all_drafts("g1")
    assert shared.startswith("$share/g1/")
    with pytest.raises(SchemaError):
        T.parse(shared)
    assert shared.removeprefix("$share/g1/") == T.all_drafts()
