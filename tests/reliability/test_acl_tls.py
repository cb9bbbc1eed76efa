"""Access control and TLS beyond tests/integration/test_acl.py.

ACL (the ``sled credentials`` layout on a real Mosquitto): device A cannot read device
B's results or prompts, cannot publish verdicts (not even its own, which would let it
pass its drafts off as verified), cannot forge B's results or status.

TLS: a test CA and a server certificate for 127.0.0.1 are made at test time with
``sled.certs`` (what ``sled credentials --ca`` runs); Mosquitto gets a second listener
with them. Clients that trust the CA connect; clients that trust another CA, only the
system CAs, or speak plain MQTT are refused.
Finally the whole system runs over TLS with passwords and the ACL: a real verifier
and a real edge process, and an app that receives token-exact text.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runtime.mosquitto import Mosquitto, free_port
from runtime.transport import Message, MqttConfig, MqttTransport, Transport, TransportError
from schemas import Topics
from sled.certs import make_test_ca
from sled.credentials import default_group, write_credentials
from tests.conftest import SecureBroker
from tests.reliability.app import GreedyReference, assert_lossless, stream_request
from tests.reliability.conftest import Models, require_mosquitto
from tests.reliability.procs import EdgeProcess, EdgeSpec, VerifierProcess, VerifierSpec, fleet

pytestmark = [pytest.mark.acl, pytest.mark.integration, pytest.mark.timeout(180)]

PROMPT = "In the beginning God created the heaven"
MAX_NEW = 24


async def next_message(bus: Transport, timeout_s: float = 5.0) -> Message:
    return await asyncio.wait_for(anext(bus.messages()), timeout_s)


async def assert_silent(bus: Transport, wait_s: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        msg = await next_message(bus, wait_s)
        pytest.fail(f"unexpected message {msg}")


async def subscribe_maybe_refused(bus: Transport, topic_filter: str) -> None:
    """Mosquitto 2.0 grants any subscription and checks ``read`` on delivery."""
    with contextlib.suppress(TransportError):
        await bus.subscribe(topic_filter)


# -- certificates ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Pki:
    ca: Path  # the test CA (PEM) the broker's certificate is signed by
    cert: Path  # server certificate for 127.0.0.1 / localhost
    key: Path
    other_ca: Path  # an unrelated CA: clients trusting only it must be refused


def make_pki(root: Path) -> Pki:
    """A CA and a server certificate (SAN IP:127.0.0.1, DNS:localhost) from
    ``sled credentials --ca``'s code, and an unrelated CA."""
    ours = make_test_ca(root, ["127.0.0.1", "localhost"], ca_days=2, server_days=2)
    other = make_test_ca(root / "other", ["127.0.0.1"], ca_days=2, server_days=2)
    for f in (ours.server_key, ours.ca_key):
        f.chmod(0o644)  # mosquitto drops root privileges; test keys only
    root.joinpath("other").chmod(0o755)
    return Pki(ours.ca_cert, ours.server_cert, ours.server_key, other.ca_cert)


@dataclass(frozen=True)
class TlsBroker:
    secure: SecureBroker  # plain listener: passwords + ACL
    tls_port: int  # TLS listener: same passwords + ACL
    pki: Pki

    def tls_config(self, username: str, **changes: object) -> MqttConfig:
        tls: dict[str, object] = {"port": self.tls_port, "tls": True, "tls_ca": str(self.pki.ca)}
        return self.secure.config(username).with_(**{**tls, **changes})

    @property
    def tls_url(self) -> str:
        return f"mqtts://127.0.0.1:{self.tls_port}"


@pytest.fixture
def tls_broker(topics: Topics) -> Iterator[TlsBroker]:
    """Mosquitto with passwords, the SLED ACL, a plain and a TLS listener (ids bound)."""
    require_mosquitto()
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    with tempfile.TemporaryDirectory(prefix="sled-tls-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)
        pki = make_pki(root)
        pw, acl = root / "passwd", root / "acl"
        made = write_credentials(pw, acl, prefix=topics.prefix, devices=["pi-1", "pi-2"],
                                 verifiers=["v1"], apps=["web"], group=default_group())  # fmt: skip
        port = free_port()
        extra = (  # the TLS listener as in broker/mosquitto.conf: client ids bound to users
            f"listener {port} 127.0.0.1\ncafile {pki.ca}\ncertfile {pki.cert}\nkeyfile {pki.key}"
            "\nuse_username_as_clientid true"
        )
        with Mosquitto.start(password_file=pw, acl_file=acl, extra_config=extra) as b:
            sb = SecureBroker(b, topics, {c.username: c for c in made}, pw, acl)
            yield TlsBroker(sb, port, pki)


# -- ACL ------------------------------------------------------------------------------------
async def test_device_cannot_read_another_devices_results_or_prompts(
    tls_broker: TlsBroker,
) -> None:
    sb, t = tls_broker.secure, tls_broker.secure.topics
    async with (
        MqttTransport(sb.config("pi-1")) as snoop,
        MqttTransport(sb.config("pi-2")) as owner,
        MqttTransport(sb.config("web")) as app,
    ):
        for flt in (t.all_out("pi-2"), t.all_out(), t.req("pi-2"), f"{t.prefix}/dev/+/req"):
            await subscribe_maybe_refused(snoop, flt)
        await app.subscribe(t.all_out("pi-2"))
        await owner.subscribe(t.req("pi-2"))
        await app.publish(t.req("pi-2"), b"a private prompt")
        assert (await next_message(owner)).payload == b"a private prompt"
        await owner.publish(t.out("pi-2", "r1"), b"private text")
        assert (await next_message(app)).payload == b"private text"  # the ACL lets it pass
        await assert_silent(snoop)


async def test_only_the_verifier_can_publish_verdicts(tls_broker: TlsBroker) -> None:
    """A device forging its *own* verdicts could pass unverified drafts off as verified."""
    sb, t = tls_broker.secure, tls_broker.secure.topics
    async with (
        MqttTransport(sb.config("pi-1")) as device,
        MqttTransport(sb.config("web")) as app,
        MqttTransport(sb.config("v1")) as verifier,
    ):
        await device.subscribe(t.verdict("pi-1"))
        await device.publish(t.verdict("pi-1"), b"self-verified")
        await app.publish(t.verdict("pi-1"), b"app-verified")
        await assert_silent(device)
        await verifier.publish(t.verdict("pi-1"), b"verified")
        assert (await next_message(device)).payload == b"verified"


async def test_device_cannot_forge_another_devices_results_or_status(
    tls_broker: TlsBroker,
) -> None:
    sb, t = tls_broker.secure, tls_broker.secure.topics
    async with (
        MqttTransport(sb.config("pi-1")) as forger,
        MqttTransport(sb.config("web")) as app,
    ):
        await app.subscribe(t.all_out())
        await app.subscribe(t.all_device_status())
        await forger.publish(t.out("pi-2", "r1"), b"forged text")
        await forger.publish(t.device_status("pi-2"), b"forged offline", retain=True)
        await forger.publish(t.req("pi-2"), b"forged request")  # devices are not apps
        await assert_silent(app)
        await forger.publish(t.out("pi-1", "r1"), b"own text")
        assert (await next_message(app)).topic == t.out("pi-1", "r1")


# -- TLS ------------------------------------------------------------------------------------
async def test_tls_listener_accepts_clients_that_trust_the_ca(tls_broker: TlsBroker) -> None:
    t = tls_broker.secure.topics
    async with (
        MqttTransport(tls_broker.tls_config("pi-1")) as device,
        MqttTransport(tls_broker.tls_config("v1", protocol="3.1.1")) as verifier,
    ):
        await verifier.subscribe(t.all_drafts())
        await device.publish(t.draft("pi-1"), b"draft over TLS")
        msg = await next_message(verifier)
        assert (msg.topic, msg.payload) == (t.draft("pi-1"), b"draft over TLS")


@pytest.mark.parametrize(
    "changes",
    [
        {"tls_ca": "other"},  # trusts an unrelated CA
        {"tls_ca": None},  # trusts only the system CAs
        {"tls": False},  # plain MQTT on the TLS port
        {"password": "wrong"},  # good TLS, bad password
    ],
    ids=["other-ca", "system-cas", "plaintext", "wrong-password"],
)
async def test_tls_listener_refuses_untrusted_clients(
    tls_broker: TlsBroker, changes: dict[str, object]
) -> None:
    if changes.get("tls_ca") == "other":
        changes = {**changes, "tls_ca": str(tls_broker.pki.other_ca)}
    cfg = tls_broker.tls_config("pi-1", connect_timeout_s=2.0, **changes)
    with pytest.raises(TransportError) as err:
        async with MqttTransport(cfg):
            pass
    if "tls_ca" in changes:
        assert "certificate verify failed" in str(err.value), err.value


async def test_whole_system_over_tls_with_passwords_and_acl(
    tls_broker: TlsBroker, rel_models: Models, rel_logs: Path, greedy: GreedyReference
) -> None:
    """A real verifier (``--tls-ca``) and edge node over mqtts:// with their credentials.

    The edge node has no CA option (``sled edge`` lacks ``--tls-ca``); it trusts the test
    CA through ``SSL_CERT_FILE``, which Python's default SSL context honours.
    """
    tb, users, t = tls_broker, tls_broker.secure.users, tls_broker.secure.topics
    v_spec = VerifierSpec(rel_models.target, tb.tls_url, t.prefix, verifier_id="v1",
                          extra=("--tls-ca", str(tb.pki.ca), "--username", "v1",
                                 f"--password={users['v1'].password}"))  # fmt: skip
    e_login = ("--username", "pi-1", f"--password={users['pi-1'].password}")
    e_spec = EdgeSpec(rel_models.drafter, tb.tls_url, t.prefix, device_id="pi-1", extra=e_login)
    app_cfg = tb.tls_config("web")
    with fleet() as f:
        verifier = f.add(VerifierProcess(v_spec, rel_logs).start())
        edge = f.add(EdgeProcess(e_spec, rel_logs, env={"SSL_CERT_FILE": str(tb.pki.ca)}).start())
        await asyncio.gather(verifier.await_ready(app_cfg, t), edge.await_ready(app_cfg, t))
        async with MqttTransport(app_cfg) as app:
            stream = await stream_request(
                app, t, "pi-1", PROMPT, max_new_tokens=MAX_NEW, request_id=uuid.uuid4().hex[:12]
            )
    assert_lossless(stream, greedy(PROMPT, MAX_NEW))
    assert stream.final is not None and stream.final.mode == "sled"
