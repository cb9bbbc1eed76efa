"""``broker/mosquitto.conf`` as it ships, run on loopback with its paths in a scratch folder.

Only the paths and ports change: the plain listener moves from 1883 to a free port (still on
127.0.0.1) and the TLS listener from 8883 to a free port on 127.0.0.1, with a test CA from
:func:`sled.certs.make_test_ca`. Users: devices ``pi-1``, ``pi-2``, verifier ``v1``, app
``web``, from :func:`sled.credentials.write_credentials`.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.mosquitto import Mosquitto, free_port, mosquitto_binary
from runtime.transport import MqttConfig
from sled.certs import CaFiles, make_test_ca
from sled.credentials import Credential, default_group, write_credentials
from sled.dynsec import write_dynsec
from tests.conftest import login_config

BROKER_DIR = Path(__file__).resolve().parents[2] / "broker"
PRODUCTION_CONF = BROKER_DIR / "mosquitto.conf"


@dataclasses.dataclass
class ProductionMosquitto(Mosquitto):
    """broker/mosquitto.conf with its paths and ports moved into a scratch folder."""

    tls_port: int = 0
    dynsec_plugin: str | None = None  # use the commented dynamic-security lines

    def config_text(self) -> str:
        d = self.workdir
        text = PRODUCTION_CONF.read_text()
        if self.dynsec_plugin is not None:
            text = text.replace("\npassword_file ", "\n#password_file ")
            text = text.replace("\nacl_file ", "\n#acl_file ")
            text = text.replace(
                "\n#plugin /usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
                f"\nplugin {self.dynsec_plugin}",
            )
            text = text.replace(
                "\n#plugin_opt_config_file /etc/mosquitto/sled-dynsec.json",
                f"\nplugin_opt_config_file {d}/dynsec.json",
            )
            assert f"plugin_opt_config_file {d}/dynsec.json" in text
        for old, new in [
            ("/etc/mosquitto/sled.passwd", f"{d}/passwd"),
            ("/etc/mosquitto/sled.acl", f"{d}/acl"),
            ("/var/lib/mosquitto/", f"{d}/"),
            ("/etc/mosquitto/certs/", f"{d}/"),
            ("\nlistener 1883 127.0.0.1\n", f"\nlistener {self.port} {self.host}\n"),
            ("\nlistener 8883\n", f"\nlistener {self.tls_port} {self.host}\n"),
        ]:
            assert old in text, f"broker/mosquitto.conf lost {old!r}"
            text = text.replace(old, new)
        return text


@dataclasses.dataclass(frozen=True)
class ProductionBroker:
    broker: ProductionMosquitto
    users: dict[str, Credential]
    pki: CaFiles

    def plain(self, username: str | None, **changes: Any) -> MqttConfig:
        """A client of the plain listener (loopback only)."""
        return login_config(self.broker, self.users, username, **changes)

    def tls(self, username: str | None, **changes: Any) -> MqttConfig:
        """A client of the TLS listener, trusting the test CA."""
        tls = {"port": self.broker.tls_port, "tls": True, "tls_ca": str(self.pki.ca_cert)}
        return self.plain(username, **{**tls, **changes})

    def log(self) -> str:
        return self.broker.log_path.read_text(errors="replace")


def scratch_folder() -> Iterator[Path]:
    try:
        mosquitto_binary()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (the production config has a TLS listener)")
    with tempfile.TemporaryDirectory(prefix="sled-prod-") as tmp:
        os.chmod(tmp, 0o755)  # mosquitto may drop root privileges; it must read these
        yield Path(tmp)


def dynsec_plugin() -> str | None:
    """The dynamic-security plugin's path on this machine, if installed."""
    found = sorted(glob.glob("/usr/lib/*/mosquitto_dynamic_security.so"))
    found += glob.glob("/usr/lib/mosquitto_dynamic_security.so")
    return found[0] if found else None


def start_production_broker(folder: Path, *, dynsec: bool = False) -> ProductionBroker:
    made = write_credentials(
        folder / "passwd",
        folder / "acl",
        devices=["pi-1", "pi-2"],
        verifiers=["v1"],
        apps=["web"],
        group=default_group(),
    )
    pki = make_test_ca(folder, ["127.0.0.1", "localhost"], ca_days=2, server_days=2)
    os.chmod(pki.server_key, 0o644)  # test key only: the broker may run as `mosquitto`
    plugin = None
    if dynsec:
        plugin = dynsec_plugin()
        if plugin is None:
            pytest.skip("mosquitto_dynamic_security.so is not installed")
        write_dynsec(folder / "passwd", folder / "acl", folder / "dynsec.json")
        os.chmod(folder / "dynsec.json", 0o666)  # test file: the broker may drop root
    broker = ProductionMosquitto(
        host="127.0.0.1",
        port=free_port(),
        workdir=folder,
        tls_port=free_port(),
        dynsec_plugin=plugin,
    )
    broker.launch()
    return ProductionBroker(broker, {c.username: c for c in made}, pki)
