"""broker/: the example ACL is what the generator writes; the production config runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.transport import MqttConfig, MqttTransport, TransportError
from schemas import Topics
from sled.credentials import render_acl
from tests.sled.production import BROKER_DIR, PRODUCTION_CONF, ProductionBroker


def test_acl_example_is_what_the_generator_writes() -> None:
    expected = render_acl(Topics(), devices=["pi-1", "pi-2"], verifiers=["v1"], apps=["web"])
    assert (BROKER_DIR / "acl.example").read_text() == expected


@pytest.mark.parametrize(
    "line",
    [
        "allow_anonymous false",
        "password_file /etc/mosquitto/sled.passwd",
        "acl_file /etc/mosquitto/sled.acl",
        "set_tcp_nodelay true",
        "persistence true",
        "listener 1883 127.0.0.1",  # plain MQTT only on loopback
        "listener 8883",
        "cafile /etc/mosquitto/certs/ca.crt",
        "certfile /etc/mosquitto/certs/server.crt",
        "keyfile /etc/mosquitto/certs/server.key",
        "use_username_as_clientid true",
    ],
)
def test_production_config_has(line: str) -> None:
    assert line in PRODUCTION_CONF.read_text().splitlines()


def test_only_loopback_listens_without_tls() -> None:
    """Every listener is either bound to 127.0.0.1 or followed by its certificate."""
    blocks = PRODUCTION_CONF.read_text().split("\nlistener ")[1:]
    assert len(blocks) == 2
    for block in blocks:
        address = block.splitlines()[0].split()
        assert address[1:] == ["127.0.0.1"] or "\ncertfile " in block, address


@pytest.mark.integration
async def test_production_config_runs_with_generated_credentials(
    production_broker: ProductionBroker,
) -> None:
    pb = production_broker
    async with MqttTransport(pb.plain("pi-1")) as d:
        await d.subscribe(Topics().verdict("pi-1"))
        await d.publish(Topics().draft("pi-1"), b"x")
    for anonymous in (pb.plain(None), pb.tls(None)):
        with pytest.raises(TransportError, match="refused"):
            async with MqttTransport(anonymous):
                pass


@pytest.mark.integration
async def test_tls_listener_with_the_generated_ca(
    production_broker: ProductionBroker, scratch: Path
) -> None:
    pb = production_broker
    cfg = MqttConfig.from_url(
        f"mqtts://pi-1:{pb.users['pi-1'].password}@127.0.0.1:{pb.broker.tls_port}",
        tls_ca=str(scratch / "ca.crt"),
        connect_timeout_s=5,
        op_timeout_s=5,
    )
    assert cfg.tls
    async with MqttTransport(cfg) as device:
        await device.publish(Topics().draft("pi-1"), b"over TLS")
    untrusted = cfg.with_(tls_ca=None, connect_timeout_s=1)  # system CAs do not know ours
    with pytest.raises(TransportError):
        async with MqttTransport(untrusted):
            pass
    plaintext = cfg.with_(tls=False, connect_timeout_s=1)  # the TLS port speaks only TLS
    with pytest.raises(TransportError):
        async with MqttTransport(plaintext):
            pass


def settings_outside_listeners(path: Path) -> list[str]:
    """The setting lines of a config, without its header and its listeners section."""
    text = path.read_text()
    text = text[text.index("per_listener_settings") :]
    start, end = text.index("# -- Listeners"), text.index("# -- Latency")
    text = text[:start] + text[end:]
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_compose_config_is_the_production_config_but_its_listeners() -> None:
    compose = BROKER_DIR / "compose.conf"
    assert settings_outside_listeners(compose) == settings_outside_listeners(PRODUCTION_CONF), (
        "copy the change made to broker/mosquitto.conf into broker/compose.conf"
    )
    assert "use_username_as_clientid true" not in compose.read_text()  # shared logins there
