"""broker/: the example ACL is what the generator writes; the production config runs."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.mosquitto import Mosquitto, free_port, mosquitto_binary
from runtime.transport import MqttConfig, MqttTransport, TransportError
from schemas import Topics
from sled.credentials import Credential, default_group, render_acl, write_credentials

BROKER_DIR = Path(__file__).resolve().parents[2] / "broker"


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
        "#listener 8883",
        "#cafile /etc/mosquitto/certs/ca.crt",
        "#certfile /etc/mosquitto/certs/server.crt",
        "#keyfile /etc/mosquitto/certs/server.key",
    ],
)
def test_production_config_has(line: str) -> None:
    assert line in (BROKER_DIR / "mosquitto.conf").read_text().splitlines()


@dataclasses.dataclass
class ProductionMosquitto(Mosquitto):
    """broker/mosquitto.conf with its paths and ports moved into a scratch folder."""

    tls_port: int | None = None

    def config_text(self) -> str:
        d = self.workdir
        text = (BROKER_DIR / "mosquitto.conf").read_text()
        text = text.replace("/etc/mosquitto/sled.passwd", str(d / "passwd"))
        text = text.replace("/etc/mosquitto/sled.acl", str(d / "acl"))
        text = text.replace("/var/lib/mosquitto/", f"{d}/")
        text = text.replace("/etc/mosquitto/certs/", f"{d}/")
        text = text.replace("\nlistener 1883\n", f"\nlistener {self.port} {self.host}\n")
        if self.tls_port is not None:
            for key in ("listener 8883", "protocol mqtt", "cafile", "certfile", "keyfile", "tls"):
                text = text.replace(f"\n#{key}", f"\n{key}")
            text = text.replace("listener 8883", f"listener {self.tls_port} {self.host}")
        return text


@pytest.fixture
def scratch() -> Iterator[Path]:
    try:
        mosquitto_binary()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    with tempfile.TemporaryDirectory(prefix="sled-prod-") as tmp:
        os.chmod(tmp, 0o755)  # mosquitto may drop root privileges; it must read these
        yield Path(tmp)


def credentials(folder: Path) -> dict[str, Credential]:
    made = write_credentials(
        folder / "passwd", folder / "acl", devices=["pi-1"], group=default_group()
    )
    return {c.username: c for c in made}


def make_test_ca(folder: Path) -> None:
    """A CA and a server certificate for 127.0.0.1, as in broker/README.md."""

    def openssl(args: str) -> None:
        subprocess.run(["openssl", *args.split()], cwd=folder, check=True, capture_output=True)

    ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
    openssl(f"req -x509 {ec} -days 2 -subj /CN=sled-test-ca -keyout ca.key -out ca.crt")
    openssl(f"req {ec} -subj /CN=127.0.0.1 -keyout server.key -out server.csr")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(
        "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2"
        " -extfile san.ext -out server.crt"
    )
    for name in ("ca.crt", "server.crt", "server.key"):
        os.chmod(folder / name, 0o644)  # test keys only; a real key is 0640 root:mosquitto


@pytest.mark.integration
async def test_production_config_runs_with_generated_credentials(scratch: Path) -> None:
    users = credentials(scratch)
    broker = ProductionMosquitto(host="127.0.0.1", port=free_port(), workdir=scratch)
    broker.launch()
    try:
        cfg = MqttConfig(host=broker.host, port=broker.port, connect_timeout_s=5, op_timeout_s=5)
        async with MqttTransport(cfg.with_(username="pi-1", password=users["pi-1"].password)) as d:
            await d.subscribe(Topics().verdict("pi-1"))
            await d.publish(Topics().draft("pi-1"), b"x")
        with pytest.raises(TransportError, match="refused"):
            async with MqttTransport(cfg):  # anonymous
                pass
    finally:
        broker.stop()


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
async def test_tls_listener_from_the_commented_block(scratch: Path) -> None:
    users = credentials(scratch)
    make_test_ca(scratch)
    broker = ProductionMosquitto(
        host="127.0.0.1", port=free_port(), workdir=scratch, tls_port=free_port()
    )
    broker.launch()
    try:
        assert broker.tls_port is not None
        cfg = MqttConfig.from_url(
            f"mqtts://pi-1:{users['pi-1'].password}@127.0.0.1:{broker.tls_port}",
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
    finally:
        broker.stop()
