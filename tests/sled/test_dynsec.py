"""``sled credentials --dynsec``: the dynamic-security plugin's file, and what it changes on
a real Mosquitto (the production config with the plugin in place of acl_file): a device's
``$share`` subscription is refused, and the verifier gets every draft."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
from pathlib import Path

import pytest

from runtime.transport import Message, MqttTransport, Transport, TransportError
from schemas import Topics
from sled.cli import main
from sled.credentials import hash_password
from sled.dynsec import DynsecError, render_dynsec, role_rules
from tests.sled.production import ProductionBroker

T = Topics()


def test_hashes_carry_over_to_the_plugin() -> None:
    hashed = hash_password("secret", salt=b"0123456789ab")
    body = render_dynsec(None, {"pi-1": "device"}, {"pi-1": hashed})
    (client,) = body["clients"]
    digest = hashlib.pbkdf2_hmac("sha512", b"secret", base64.b64decode(client["salt"]), 101)
    assert (client["username"], client["iterations"]) == ("pi-1", 101)
    assert base64.b64decode(client["password"]) == digest
    assert client["roles"] == [{"rolename": "sled-device-pi-1"}]
    assert body["defaultACLAccess"]["subscribe"] is False
    assert body["defaultACLAccess"]["publishClientSend"] is False


@pytest.mark.parametrize(
    ("role", "name", "rule"),
    [
        ("device", "pi-1", ("publishClientSend", "sled/v1/dev/pi-1/draft")),
        ("device", "pi-1", ("subscribePattern", "sled/v1/dev/pi-1/verdict")),
        ("verifier", "v1", ("subscribePattern", "$share/+/sled/v1/dev/+/draft")),
        ("verifier", "v1", ("publishClientSend", "sled/v1/verifier/+/status")),
        ("verifier", "v1", ("subscribePattern", "sled/v1/dev/+/draft/+")),
        ("device", "pi-1", ("publishClientSend", "sled/v1/dev/pi-1/draft/+")),
        ("app", "web", ("publishClientSend", "sled/v1/dev/+/req")),
    ],
)
def test_role_rules(role: str, name: str, rule: tuple[str, str]) -> None:
    assert rule in role_rules(T, role, name)


def test_only_devices_may_not_join_share_groups() -> None:
    device = role_rules(T, "device", "pi-1")
    assert not any(topic.startswith("$share") for _, topic in device)
    assert not any("+/draft" in topic for _, topic in device)


@pytest.mark.parametrize(
    ("hashes", "match"),
    [({}, "without a password"), ({"pi-1": "$6$c2FsdA==$ZGlnZXN0"}, r"\$7\$")],
)
def test_unusable_input_is_refused(hashes: dict[str, str], match: str) -> None:
    with pytest.raises(DynsecError, match=match):
        render_dynsec(None, {"pi-1": "device"}, hashes)


def test_cli_writes_the_file(tmp_path: Path) -> None:
    pw, acl, dyn = tmp_path / "pw", tmp_path / "acl", tmp_path / "dynsec.json"
    argv = ["credentials", "--password-file", str(pw), "--acl-file", str(acl)]
    assert main([*argv, "--device", "pi-1", "--verifier", "v1", "--no-mosquitto-passwd"]) == 0
    assert main([*argv, "--dynsec", str(dyn)]) == 0  # from the files alone
    names = [c["username"] for c in json.loads(dyn.read_text())["clients"]]
    assert names == ["pi-1", "v1"]


# -- on a real broker --------------------------------------------------------------------------
async def next_message(bus: Transport, timeout_s: float = 5.0) -> Message:
    return await asyncio.wait_for(anext(bus.messages()), timeout_s)


@pytest.mark.integration
@pytest.mark.acl
async def test_device_cannot_join_the_verifiers_share_group(
    dynsec_broker: ProductionBroker,
) -> None:
    pb = dynsec_broker
    async with (
        MqttTransport(pb.tls("pi-1")) as device,
        MqttTransport(pb.tls("v1")) as verifier,
        MqttTransport(pb.tls("pi-2")) as intruder,
    ):
        await verifier.subscribe(T.all_drafts("verifiers"))
        with pytest.raises(TransportError, match="refused subscription"):
            await intruder.subscribe(T.all_drafts("verifiers"))
        with pytest.raises(TransportError, match="refused subscription"):
            await intruder.subscribe(T.all_drafts())
        for i in range(6):
            await device.publish(T.draft("pi-1"), b"draft %d" % i)
        got = [(await next_message(verifier)).payload for _ in range(6)]
        assert got == [b"draft %d" % i for i in range(6)]  # none dropped


@pytest.mark.integration
@pytest.mark.acl
async def test_roles_can_do_their_jobs_under_the_plugin(dynsec_broker: ProductionBroker) -> None:
    pb = dynsec_broker
    async with (
        MqttTransport(pb.tls("pi-1")) as device,
        MqttTransport(pb.tls("v1")) as verifier,
        MqttTransport(pb.tls("web")) as app,
    ):
        await verifier.subscribe(T.all_drafts())
        await device.subscribe(T.verdict("pi-1"))
        await device.subscribe(T.req("pi-1"))
        await app.subscribe(T.all_out())
        await app.subscribe(T.all_verifier_status())
        await app.publish(T.req("pi-1"), b"generate")
        assert (await next_message(device)).payload == b"generate"
        await device.publish(T.draft("pi-1"), b"draft")
        assert (await next_message(verifier)).payload == b"draft"
        await verifier.publish(T.verdict("pi-1"), b"verdict")
        assert (await next_message(device)).payload == b"verdict"
        await device.publish(T.out("pi-1", "r1"), b"chunk")
        assert (await next_message(app)).topic == T.out("pi-1", "r1")
        await verifier.publish(T.verifier_status("v1"), b"online", retain=True)
        assert (await next_message(app)).topic == T.verifier_status("v1")
        await device.publish(T.draft("pi-2"), b"forged")  # not its own: dropped
        await device.publish(T.verdict("pi-1"), b"self-verified")  # devices cannot verdict
        with contextlib.suppress(TimeoutError):
            msg = await next_message(verifier, 0.5)
            pytest.fail(f"forged draft delivered: {msg}")
        with contextlib.suppress(TimeoutError):
            msg = await next_message(device, 0.5)
            pytest.fail(f"self-verdict delivered: {msg}")
