"""The compose helpers: logins created once and handed out; the status healthcheck."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_node.config import EdgeConfig
from runtime.transport import MqttConfig, MqttTransport
from schemas import DeviceStatus, Topics, encode
from sled.credentials import verify_password
from sled.demo import compose_auth, healthcheck
from sled.demo.broker import embedded_broker
from verifier_node.config import VerifierConfig


def init(tmp_path: Path) -> bool:
    return compose_auth.init(
        password_file=tmp_path / "broker" / "sled.passwd",
        acl_file=tmp_path / "broker" / "sled.acl",
        client_dir=tmp_path / "clients",
        data_dir=tmp_path / "data",
        devices=["pi-1"],
        verifiers=["v-1"],
        apps=["health"],
    )


def test_init_once_and_each_node_reads_its_login(tmp_path: Path) -> None:
    assert init(tmp_path) is True
    first = (tmp_path / "broker" / "sled.passwd").read_text()
    assert init(tmp_path) is False  # a second `docker compose up` keeps every password
    assert (tmp_path / "broker" / "sled.passwd").read_text() == first
    clients = tmp_path / "clients"
    edge = EdgeConfig.load({}, env={}, toml_path=clients / "pi-1.toml")
    verifier = VerifierConfig.load({}, env={}, toml_path=clients / "v-1.toml")
    assert (edge.username, verifier.username) == ("pi-1", "v-1")
    hashes = dict(line.split(":", 1) for line in first.splitlines())
    assert edge.password is not None and verify_password(edge.password, hashes["pi-1"])
    user, password = compose_auth.read_login(clients, "health")
    assert user == "health"
    assert (clients / "health.password").read_text().strip() == password
    assert (clients / "pi-1.toml").stat().st_mode & 0o777 == 0o600
    assert "user v-1" in (tmp_path / "broker" / "sled.acl").read_text()


def test_exec_passes_the_login_in_env(tmp_path: Path) -> None:
    init(tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "sled.demo.compose_auth", "exec", "--client-dir",
         str(tmp_path / "clients"), "health", "--", sys.executable, "-c",
         "import os; print(os.environ['SLED_USERNAME'], len(os.environ['SLED_PASSWORD']))"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["health", "24"]


def health_args(url: str, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    healthcheck.add_arguments(parser)
    return parser.parse_args(
        ["--broker-url", url, "--protocol", "3.1.1", "--prefix", "hc/sled/v1", *extra]
    )


@pytest.mark.parametrize("online", [True, False])
async def test_healthcheck_reads_the_retained_status(online: bool) -> None:
    topics = Topics("hc/sled/v1")
    async with embedded_broker("amqtt") as broker:
        cfg = MqttConfig.from_url(broker.url, protocol="3.1.1", persistent=False)
        async with MqttTransport(cfg) as bus:
            status = DeviceStatus(device="pi-9", online=online, sent_at_ns=time.time_ns())
            await bus.publish(topics.device_status("pi-9"), encode(status), retain=True)
        ok, why = await healthcheck.check(health_args(broker.url, "--device", "pi-9"))
        assert ok is online and ("online" if online else "offline") in why
        ok, why = await healthcheck.check(
            health_args(broker.url, "--verifier", "nobody", "--timeout-s", "0.5")
        )
        assert not ok and "no status" in why


async def test_healthcheck_without_a_broker() -> None:
    ok, why = await healthcheck.check(
        health_args("mqtt://127.0.0.1:9", "--device", "pi-1", "--timeout-s", "1")
    )
    assert not ok and "broker" in why
