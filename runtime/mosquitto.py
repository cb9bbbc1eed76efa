"""Run a private Mosquitto process on a free loopback port (tests, benchmarks, demo).

    with Mosquitto.start() as broker:
        cfg = MqttConfig(host=broker.host, port=broker.port)

The process gets its own config in a temporary folder: ``set_tcp_nodelay true``,
persistence in that folder (so a restart keeps sessions and queued QoS 1 messages),
and optionally a password file and ACL file (the production layout in ``broker/``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


class MosquittoNotFound(RuntimeError):
    """No ``mosquitto`` binary on PATH (Debian: ``apt-get install -y mosquitto``)."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)), None
    )
    if found is None:
        raise MosquittoNotFound("mosquitto is not installed (Debian: apt-get install -y mosquitto)")
    return found


@dataclass
class Mosquitto:
    """A running (or stopped) private broker; ``restart()`` keeps port and persistence."""

    host: str
    port: int
    workdir: Path
    password_file: Path | None = None
    acl_file: Path | None = None
    extra_config: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def config_text(self) -> str:
        lines = [
            f"listener {self.port} {self.host}",
            "set_tcp_nodelay true",
            "persistence true",
            f"persistence_location {self.workdir}/",
            "autosave_interval 1",
            "max_queued_messages 100000",
            "max_inflight_messages 0",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if self.password_file is not None:
            lines += ["allow_anonymous false", f"password_file {self.password_file}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        if self.extra_config:
            lines.append(self.extra_config)
        return "\n".join(lines) + "\n"

    @classmethod
    @contextlib.contextmanager
    def start(
        cls,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        password_file: Path | None = None,
        acl_file: Path | None = None,
        extra_config: str = "",
    ) -> Iterator[Mosquitto]:
        with tempfile.TemporaryDirectory(prefix="sled-mosquitto-") as tmp:
            broker = cls(
                host=host,
                port=port or free_port(host),
                workdir=Path(tmp),
                password_file=password_file,
                acl_file=acl_file,
                extra_config=extra_config,
            )
            os.chmod(tmp, 0o777)  # mosquitto drops root privileges; it must write here
            broker.launch()
            try:
                yield broker
            finally:
                broker.stop()

    def launch(self, timeout_s: float = 10.0) -> None:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(self.config_text())
        with open(self.log_path, "ab") as logf:
            self.process = subprocess.Popen(
                [mosquitto_binary(), "-c", str(conf)],
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited at start:\n{self.log_path.read_text()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), 0.2),
            ):
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.host}:{self.port} in {timeout_s} s")

    def stop(self, *, kill: bool = False) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def restart(self, *, down_s: float = 0.0, kill: bool = False) -> None:
        self.stop(kill=kill)
        if down_s:
            time.sleep(down_s)
        self.launch()
