"""Sticky assignment under the broker ACL (``sled credentials``) on a real Mosquitto.

With assigned draft topics the verifiers use no share group, so a device that subscribes
to everything it can think of takes nothing away: every draft reaches its verifier, and
the device is delivered none (Mosquitto checks ``read`` on delivery). A device may publish
drafts only under its own id (``{p}/dev/%u/draft/+``).
"""

from __future__ import annotations

import contextlib

import pytest

from runtime.transport import MqttTransport
from tests.conftest import SecureBroker
from tests.integration.test_acl import assert_silent, next_message, subscribe_maybe_refused

pytestmark = [pytest.mark.scaleout, pytest.mark.integration, pytest.mark.acl]

DRAFTS = 12


async def drain(bus: MqttTransport, wait_s: float = 0.7) -> list[bytes]:
    got: list[bytes] = []
    with contextlib.suppress(TimeoutError):
        while True:
            got.append((await next_message(bus, wait_s)).payload)
    return got


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_a_device_cannot_swallow_or_read_assigned_drafts(
    secure_broker: SecureBroker, protocol: str
) -> None:
    sb, t = secure_broker, secure_broker.topics
    async with (
        MqttTransport(sb.config("pi-1", protocol=protocol)) as device,
        MqttTransport(sb.config("v1", protocol=protocol)) as verifier,
        MqttTransport(sb.config("pi-2", protocol=protocol)) as intruder,
    ):
        await verifier.subscribe(t.drafts_for("v1"))
        for topic_filter in (
            t.drafts_for("v1"),
            f"{t.prefix}/dev/+/draft/+",
            f"{t.prefix}/dev/pi-1/#",
            f"$share/sled/{t.drafts_for('v1')}",  # a share group of its own
            f"$share/verifiers/{t.prefix}/dev/+/draft/+",
            "#",
        ):
            await subscribe_maybe_refused(intruder, topic_filter)
        sent = [b"draft %d" % i for i in range(DRAFTS)]
        for payload in sent:
            await device.publish(t.assigned_draft("pi-1", "v1"), payload)
        assert await drain(verifier) == sent  # every draft, in order: nothing swallowed
        await assert_silent(intruder)


async def test_a_device_publishes_assigned_drafts_only_as_itself(
    secure_broker: SecureBroker,
) -> None:
    sb, t = secure_broker, secure_broker.topics
    async with (
        MqttTransport(sb.config("pi-2")) as forger,
        MqttTransport(sb.config("v1")) as verifier,
    ):
        await verifier.subscribe(t.drafts_for("v1"))
        await forger.publish(t.assigned_draft("pi-1", "v1"), b"forged")  # dropped by the ACL
        await forger.publish(t.assigned_draft("pi-2", "v1"), b"own")
        assert await drain(verifier) == [b"own"]


async def test_verifiers_read_assigned_drafts_and_announce_any_replica_id(
    secure_broker: SecureBroker,
) -> None:
    """A verifier login reads every assigned topic and may announce a replica's status
    (``docker compose --scale`` replicas share one login, each with its host name)."""
    sb, t = secure_broker, secure_broker.topics
    async with (
        MqttTransport(sb.config("pi-1")) as device,
        MqttTransport(sb.config("v1")) as verifier,
        MqttTransport(sb.config("web")) as app,
    ):
        await verifier.subscribe(t.drafts_for("replica-7f3a"))
        await device.subscribe(t.all_verifier_status())
        await device.publish(t.assigned_draft("pi-1", "replica-7f3a"), b"draft")
        assert (await next_message(verifier)).payload == b"draft"
        await verifier.publish(t.verifier_status("replica-7f3a"), b"online", retain=True)
        assert (await next_message(device)).topic == t.verifier_status("replica-7f3a")
        await app.publish(t.verifier_status("replica-7f3a"), b"forged")  # apps may not
        await assert_silent(device)
