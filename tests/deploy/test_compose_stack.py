"""The compose stack's wiring, run without Docker: the same commands, env and files.

Each step runs what docker-compose.yml says (resolved by the compose binary), with
container paths mapped to this checkout (bind mounts) or to folders standing in for the
named volumes, and ``mosquitto:1883`` mapped to a private Mosquitto that uses the
password file and ACL the ``credentials`` service wrote:

credentials init → broker → verifier and one edge node (their ``SLED_*`` env, login
from ``SLED_CONFIG``) → every healthcheck command → ``docker compose run app generate``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.mosquitto import Mosquitto
from sled.demo.procs import NodeProcess, node_env
from tests.conftest import require_mosquitto
from tests.deploy.compose_model import host_path, resolved_config, service_argv

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HEALTHY_TIMEOUT_S = 120.0
EDGE = "pi-1"


def python_argv(argv: list[str]) -> list[str]:
    """``sled …`` / ``python …`` of a container, run with this interpreter."""
    if argv[0] == "sled":
        return [sys.executable, "-m", "sled.cli", *argv[1:]]
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    raise AssertionError(argv)


def mapped(service: dict[str, Any], value: str, volumes: Path, broker_url: str) -> str:
    """A container path or broker URL of ``service``, as seen from this machine."""
    if value.startswith("mqtt://mosquitto:"):
        return broker_url
    if value.startswith("--") and "=" in value:
        flag, _, rest = value.partition("=")
        return f"{flag}={mapped(service, rest, volumes, broker_url)}"
    if value.startswith("/"):
        found = host_path(service, value, volumes)
        if found is not None:
            return str(found)
    return value


def service_env(service: dict[str, Any], volumes: Path, broker_url: str) -> dict[str, str]:
    env = {k: mapped(service, str(v), volumes, broker_url) for k, v in
           service.get("environment", {}).items()}  # fmt: skip
    env = node_env(env, threads=1)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    return env


def run_healthcheck(service: dict[str, Any], volumes: Path, broker: Mosquitto) -> tuple[int, str]:
    test = service["healthcheck"]["test"]
    env = service_env(service, volumes, broker.url)
    if test[0] == "CMD":
        argv = python_argv([mapped(service, a, volumes, broker.url) for a in test[1:]])
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    else:
        shell = test[1].replace("$$", "$").replace("-p 1883", f"-p {broker.port}")
        shell = shell.replace("/run/sled-auth", str(host_path(service, "/run/sled-auth", volumes)))
        proc = subprocess.run(
            ["sh", "-c", shell], env=env, capture_output=True, text=True, timeout=60
        )
    return proc.returncode, proc.stdout + proc.stderr


def wait_healthy(
    service: dict[str, Any], volumes: Path, broker: Mosquitto, node: NodeProcess
) -> None:
    deadline = time.monotonic() + HEALTHY_TIMEOUT_S
    while True:
        code, out = run_healthcheck(service, volumes, broker)
        if code == 0:
            return
        assert node.running, f"{node.name} exited:\n{node.log_tail()}"
        assert time.monotonic() < deadline, f"{node.name} never healthy: {out}"
        time.sleep(1.0)


@pytest.fixture
def volumes() -> Iterator[Path]:
    """Stand-ins for the named volumes, where the broker's dropped-privilege user can read."""
    with tempfile.TemporaryDirectory(prefix="sled-compose-") as tmp:
        os.chmod(tmp, 0o755)
        yield Path(tmp)


def test_compose_stack_without_docker(tmp_path: Path, volumes: Path) -> None:
    require_mosquitto()
    services = resolved_config()["services"]
    auth = services["credentials"]
    init = python_argv([mapped(auth, a, volumes, "") for a in service_argv(auth)])
    done = subprocess.run(init, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    again = subprocess.run(init, capture_output=True, text=True, timeout=60)
    assert "already there, kept" in again.stdout  # a second `up` keeps the passwords
    broker_auth = volumes / "broker-auth"
    for path in (volumes / "broker-auth", *broker_auth.iterdir()):  # the test broker's user
        os.chmod(path, 0o755 if path.is_dir() else 0o644)  # is not uid 1883 as in the image
    with Mosquitto.start(
        password_file=broker_auth / "sled.passwd", acl_file=broker_auth / "sled.acl"
    ) as broker:
        code, out = run_healthcheck(services["mosquitto"], volumes, broker)
        assert code == 0, out
        nodes = []
        try:
            for name in ("verifier", EDGE):
                service = services[name]
                node = NodeProcess(
                    name,
                    python_argv(service_argv(service)),
                    tmp_path / f"{name}.log",
                    service_env(service, volumes, broker.url),
                )
                node.start()
                nodes.append(node)
                wait_healthy(service, volumes, broker, node)
            app = services["app"]
            argv = [mapped(app, a, volumes, broker.url) for a in service_argv(app)]
            argv = argv[: argv.index("sled") + 1]  # compose_auth exec app -- sled
            asked = subprocess.run(
                [*python_argv(argv[:3]), *argv[3:], "generate", EDGE, "In the beginning",
                 "--max-new-tokens", "12"],
                env=service_env(app, volumes, broker.url), capture_output=True, text=True,
                timeout=120,
            )  # fmt: skip
        finally:
            for node in reversed(nodes):
                node.kill()
    assert asked.returncode == 0, asked.stdout + asked.stderr
    assert "12 tokens" in asked.stdout and "mode sled" in asked.stdout, asked.stdout
