"""MQTT filter matching (``+``, ``#``, ``$`` topics, ``$share`` prefixes)."""

from __future__ import annotations

import pytest

from runtime.transport import topic_matches


@pytest.mark.parametrize(
    ("topic_filter", "topic", "matches"),
    [
        ("sled/v1/dev/pi-1/draft", "sled/v1/dev/pi-1/draft", True),
        ("sled/v1/dev/pi-1/draft", "sled/v1/dev/pi-2/draft", False),
        ("sled/v1/dev/+/draft", "sled/v1/dev/pi-1/draft", True),
        ("sled/v1/dev/+/draft", "sled/v1/dev/pi-1/verdict", False),
        ("sled/v1/dev/+/draft", "sled/v1/dev/a/b/draft", False),  # + is one level
        ("sled/v1/dev/+/out/+", "sled/v1/dev/pi-1/out/r-7", True),
        ("sled/v1/dev/+/out/+", "sled/v1/dev/pi-1/out", False),
        ("sled/v1/#", "sled/v1/dev/pi-1/draft", True),
        ("sled/v1/#", "sled/v1", True),  # '#' also matches the parent level
        ("sled/v1/#", "sled/v10/x", False),
        ("#", "a/b/c", True),
        ("+", "a", True),
        ("+", "a/b", False),
        ("a/+", "a/", True),  # an empty level is a level
        ("a/+", "a", False),
        ("+/+", "/x", True),
        ("a/b", "a/b/c", False),
        ("a/b/c", "a/b", False),
        ("A/b", "a/b", False),  # case-sensitive
        ("#", "$SYS/broker/uptime", False),  # wildcards never match $ topics at level 1
        ("+/broker/uptime", "$SYS/broker/uptime", False),
        ("$SYS/#", "$SYS/broker/uptime", True),
        ("$share/g1/sled/v1/dev/+/draft", "sled/v1/dev/pi-1/draft", True),
        ("$share/g1/sled/v1/dev/+/draft", "sled/v1/dev/pi-1/verdict", False),
        ("$share/g1/#", "a/b", True),
        ("$share/g1", "g1", False),  # no filter after the group
        ("$share//a", "a", False),  # empty group
    ],
)
def test_topic_matches(topic_filter: str, topic: str, matches: bool) -> None:
    assert topic_matches(topic_filter, topic) is matches
