"""Every MQTT topic of the system, built and parsed here and nowhere else.

Layout under a configurable prefix (default ``sled/v1``)::

    {prefix}/dev/{device}/draft            device → verifiers  DraftRequest, CentralizedRequest
    {prefix}/dev/{device}/draft/{verifier} device → verifier   the same, for its assigned verifier
    {prefix}/dev/{device}/verdict          verifier → device   Verdict, GeneratedTokens
    {prefix}/dev/{device}/out/{request}    device → apps       ResultChunk…, ResultFinal
    {prefix}/dev/{device}/req              apps → device       GenerateRequest
    {prefix}/dev/{device}/status           device, retained    DeviceStatus (Last Will too)
    {prefix}/verifier/{verifier}/status    verifier, retained  VerifierStatus (Last Will too)

Several verifiers share the devices by **sticky assignment**: each device picks one
online verifier by weighted rendezvous hashing over their retained statuses
(:mod:`runtime.assignment`) and sends its drafts on ``…/dev/{device}/draft/{verifier}``,
which only that verifier reads (``…/dev/+/draft/{verifier}``). The device id comes first,
so the broker's ACL pattern ``…/dev/%u/draft/+`` lets a device publish only as itself.
A verifier in a share group reads the plain ``…/dev/{device}/draft`` through the MQTT v5
shared subscription ``$share/{group}/{prefix}/dev/+/draft`` instead (round robin per
message; docs/reliability.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from schemas.errors import ErrorCode, SchemaError

DEFAULT_PREFIX: Final = "sled/v1"

_ID_RE: Final = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


class Channel(StrEnum):
    """The kinds of topic in the layout above."""

    DRAFT = "draft"
    ASSIGNED_DRAFT = "assigned_draft"
    VERDICT = "verdict"
    OUT = "out"
    REQ = "req"
    DEVICE_STATUS = "device_status"
    VERIFIER_STATUS = "verifier_status"


def check_id(what: str, value: str) -> str:
    """Device, verifier and request ids: 1–64 of ``A-Z a-z 0-9 _ . -``."""
    if not _ID_RE.match(value):
        raise SchemaError(
            ErrorCode.BAD_TOPIC, f"{what} id {value!r} must be 1-64 characters of A-Z a-z 0-9 _ . -"
        )
    return value


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    channel: Channel
    device: str | None = None
    verifier: str | None = None
    request: str | None = None


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic builder for one prefix: ``Topics().draft("pi-1") == "sled/v1/dev/pi-1/draft"``."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not self.prefix or self.prefix.startswith("/") or self.prefix.endswith("/"):
            raise SchemaError(
                ErrorCode.BAD_TOPIC,
                f"prefix {self.prefix!r} must not be empty or start/end with '/'",
            )
        if set(self.prefix) & set("+#\x00") or self.prefix.startswith("$"):
            raise SchemaError(
                ErrorCode.BAD_TOPIC, f"prefix {self.prefix!r} must not contain + # or start with $"
            )

    def _dev(self, device: str) -> str:
        return f"{self.prefix}/dev/{check_id('device', device)}"

    def draft(self, device: str) -> str:
        return f"{self._dev(device)}/draft"

    def assigned_draft(self, device: str, verifier: str) -> str:
        """The draft topic that only ``verifier`` reads."""
        return f"{self._dev(device)}/draft/{check_id('verifier', verifier)}"

    def verdict(self, device: str) -> str:
        return f"{self._dev(device)}/verdict"

    def out(self, device: str, request: str) -> str:
        return f"{self._dev(device)}/out/{check_id('request', request)}"

    def req(self, device: str) -> str:
        return f"{self._dev(device)}/req"

    def device_status(self, device: str) -> str:
        return f"{self._dev(device)}/status"

    def verifier_status(self, verifier: str) -> str:
        return f"{self.prefix}/verifier/{check_id('verifier', verifier)}/status"

    # Subscription filters -------------------------------------------------------
    def all_drafts(self, share_group: str | None = None) -> str:
        """All devices' draft topics; with ``share_group`` an MQTT v5 shared subscription."""
        topic = f"{self.prefix}/dev/+/draft"
        return f"$share/{check_id('share group', share_group)}/{topic}" if share_group else topic

    def drafts_for(self, verifier: str) -> str:
        """Every device's drafts assigned to ``verifier`` (a plain subscription)."""
        return f"{self.prefix}/dev/+/draft/{check_id('verifier', verifier)}"

    def all_out(self, device: str = "+") -> str:
        dev = device if device == "+" else check_id("device", device)
        return f"{self.prefix}/dev/{dev}/out/+"

    def all_device_status(self) -> str:
        return f"{self.prefix}/dev/+/status"

    def all_verifier_status(self) -> str:
        return f"{self.prefix}/verifier/+/status"

    def parse(self, topic: str) -> ParsedTopic:
        """The channel and ids of a concrete topic; SchemaError when outside the layout."""
        head = self.prefix + "/"
        if not topic.startswith(head):
            raise SchemaError(
                ErrorCode.BAD_TOPIC, f"topic {topic!r} is not under prefix {self.prefix!r}"
            )
        parts = topic[len(head) :].split("/")
        match parts:
            case ["dev", device, "draft"]:
                return ParsedTopic(Channel.DRAFT, device=check_id("device", device))
            case ["dev", device, "draft", verifier]:
                return ParsedTopic(
                    Channel.ASSIGNED_DRAFT,
                    device=check_id("device", device),
                    verifier=check_id("verifier", verifier),
                )
            case ["dev", device, "verdict"]:
                return ParsedTopic(Channel.VERDICT, device=check_id("device", device))
            case ["dev", device, "req"]:
                return ParsedTopic(Channel.REQ, device=check_id("device", device))
            case ["dev", device, "status"]:
                return ParsedTopic(Channel.DEVICE_STATUS, device=check_id("device", device))
            case ["dev", device, "out", request]:
                return ParsedTopic(
                    Channel.OUT,
                    device=check_id("device", device),
                    request=check_id("request", request),
                )
            case ["verifier", verifier, "status"]:
                return ParsedTopic(Channel.VERIFIER_STATUS, verifier=check_id("verifier", verifier))
        raise SchemaError(ErrorCode.BAD_TOPIC, f"topic {topic!r} is not part of the layout")
