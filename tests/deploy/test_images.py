"""The real images: docker-compose.yml run by Docker, and the arm64 edge image under qemu.

Needs a Docker engine and the images ``deploy/images/build-local.sh`` makes (``.ci/run``
runs it under CI): sled-edge:0.1.0 (amd64 and -arm64), sled-verifier:0.1.0 and
eclipse-mosquitto:2. Without an engine the tests skip (under CI=true they fail).

One stack per module, under its own project name and free host ports:
``docker compose up -d --wait`` → ``docker compose run --rm app generate`` (the completion
token-exact equal to the target model's own greedy output) → the verifier's /metrics →
the arm64 edge image, emulated, in place of pi-1 (token-exact again) → ``down -v``.

Emulated containers: onnxruntime segfaults on import under qemu while reading the host's
/sys/devices/system/cpu, and the crashed container hangs; every emulated run here has
``--tmpfs /sys/devices/system/cpu`` and a timeout. Real arm64 hardware needs neither.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

import pytest

from runtime.transport import MqttConfig, MqttTransport
from schemas import ResultFinal, Topics, VerifierStatus, decode
from sled.client import SledClient
from tests.deploy.compose_model import COMPOSE_FILE, ROOT

pytestmark = [pytest.mark.images, pytest.mark.slow, pytest.mark.timeout(2400)]

VERSION = "0.1.0"
EDGE = f"sled-edge:{VERSION}"
EDGE_ARM64 = f"sled-edge:{VERSION}-arm64"
IMAGES = (EDGE, EDGE_ARM64, f"sled-verifier:{VERSION}", "eclipse-mosquitto:2")
MAX_EDGE_IMAGE_BYTES = 450 * 1000**2  # "450 MB" as `docker images` counts
EMULATED = ["--platform", "linux/arm64", "--tmpfs", "/sys/devices/system/cpu"]
MODELS = ROOT / "sled" / "demo" / "models"
DEVICE = "pi-1"
PROMPT = "In the beginning"
MAX_NEW_TOKENS = 48
UP_TIMEOUT_S = 600
EMULATED_START_TIMEOUT_S = 900
GENERATE_TIMEOUT_S = 600


def docker(*args: str, timeout_s: float = 120, check: bool = True) -> str:
    proc = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout_s, cwd=ROOT
    )
    if check:
        assert proc.returncode == 0, f"docker {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def require_images() -> None:
    """Skip without a Docker engine or the images (fail under CI, where .ci/run builds them)."""
    why = ""
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
        if info.returncode != 0:
            why = f"no Docker engine answers (`docker info`: {info.stderr.strip()[:200]})"
    except (OSError, subprocess.TimeoutExpired) as exc:
        why = f"no Docker engine: {exc}"
    if not why:
        missing = [i for i in IMAGES if not docker("image", "inspect", i, check=False).strip()]
        if missing:
            why = f"images {missing} not built: sudo bash deploy/images/build-local.sh"
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture(scope="module", autouse=True)
def images() -> None:
    require_images()


@pytest.mark.parametrize(("image", "emulated"), [(EDGE, []), (EDGE_ARM64, EMULATED)])
def test_edge_image_is_small_without_torch_and_not_root(image: str, emulated: list[str]) -> None:
    size_bytes = int(docker("image", "inspect", "-f", "{{.Size}}", image))
    assert size_bytes < MAX_EDGE_IMAGE_BYTES, size_bytes
    arch = docker("image", "inspect", "-f", "{{.Architecture}}", image).strip()
    assert arch == ("arm64" if emulated else "amd64")
    probe = (
        "import importlib.util, os, platform; "
        "print(os.getuid(), os.getgid(), platform.machine(), "
        "importlib.util.find_spec('torch') is None, importlib.util.find_spec('onnxruntime') "
        "is not None)"
    )
    # a hung emulated container outlives its killed `docker run`: remove it by name
    name = f"sled-images-probe-{os.getpid()}-{arch}"
    try:
        out = docker("run", "--rm", "--name", name, *emulated, "--entrypoint", "python", image,
                     "-c", probe, timeout_s=600)  # fmt: skip
    finally:
        docker("rm", "-f", name, check=False)
    uid, gid, machine, no_torch, has_onnxruntime = out.split()
    assert (uid, gid) == ("10001", "10001")
    assert machine == ("aarch64" if emulated else "x86_64")
    assert no_torch == "True" and has_onnxruntime == "True"


@dataclass(frozen=True)
class Stack:
    project: str
    broker_port: int
    metrics_port: int
    env: dict[str, str]
    app_login: tuple[str, str]

    def compose(self, *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
        argv = ["docker", "compose", "-p", self.project, "-f", str(COMPOSE_FILE), *args]
        return subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,  # no TTY: plain output
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=ROOT,
            env=self.env,
        )

    def mqtt(self) -> MqttConfig:
        username, password = self.app_login
        return MqttConfig.from_url(
            f"mqtt://127.0.0.1:{self.broker_port}",
            username=username,
            password=password,
            persistent=False,
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_pair() -> int:
    """A port p with p and p + 1 free (one metrics port per verifier replica)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two consecutive free ports")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    project = f"sled-images-{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    broker_port, metrics_port = free_port(), free_port_pair()
    # a range: one host port per verifier replica (test_scale_to_two_verifiers)
    env.update(
        SLED_BROKER_HOST_PORT=str(broker_port),
        SLED_METRICS_HOST_PORT=f"{metrics_port}-{metrics_port + 1}",
    )
    bare = Stack(project, broker_port, metrics_port, env, ("", ""))
    try:
        start = time.monotonic()
        up = bare.compose("up", "-d", "--wait", "--no-build", timeout_s=UP_TIMEOUT_S)
        assert up.returncode == 0, up.stdout + up.stderr + bare.compose("logs").stdout
        print(f"compose up --wait: {time.monotonic() - start:.0f} s", file=sys.stderr)
        login = bare.compose(
            "run", "--rm", "--no-deps", "--entrypoint", "cat", "app", "/run/sled-auth/app.toml"
        )
        assert login.returncode == 0, login.stderr
        table = tomllib.loads(login.stdout)
        yield Stack(project, broker_port, metrics_port, env, (table["username"], table["password"]))
    finally:
        docker("rm", "-f", f"{project}-{DEVICE}-arm64", check=False)
        bare.compose("down", "-v", "--timeout", "20", timeout_s=300)


@pytest.fixture(scope="module")
def reference() -> list[int]:
    """The target model's own greedy completion of PROMPT."""
    from sled.demo.reference import target_greedy

    return target_greedy(MODELS / "target", [PROMPT], MAX_NEW_TOKENS)[PROMPT]


async def generate_through_stack(stack: Stack, device: str) -> tuple[ResultFinal, str]:
    """``docker compose run --rm app generate DEVICE PROMPT``, with its final result as an
    app subscribed from this machine receives it (the tokens, not only the text)."""
    async with MqttTransport(stack.mqtt()) as bus:
        client = SledClient(bus, Topics("sled/v1"))
        results = client.follow(device, timeout_s=GENERATE_TIMEOUT_S)
        first = asyncio.ensure_future(results.__anext__())  # subscribes before the request
        await asyncio.sleep(1.0)
        proc = await asyncio.create_subprocess_exec(
            "docker", "compose", "-p", stack.project, "-f", str(COMPOSE_FILE),
            "run", "--rm", "app", "generate", device, PROMPT,
            "--max-new-tokens", str(MAX_NEW_TOKENS), "--timeout", str(GENERATE_TIMEOUT_S),
            cwd=ROOT, env=stack.env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), GENERATE_TIMEOUT_S + 60)
        finally:
            if proc.returncode is None:
                proc.kill()
        printed = out.decode()
        assert proc.returncode == 0, printed
        _, _, result = await asyncio.wait_for(first, 30)
        while not isinstance(result, ResultFinal):
            _, _, result = await asyncio.wait_for(results.__anext__(), 30)
        return result, printed


def check_lossless(final: ResultFinal, printed: str, reference: list[int]) -> None:
    assert final.finish_reason in ("stop", "length"), final
    assert final.tokens == reference, (final.tokens, reference)
    assert final.verified_tokens == final.completion_tokens == len(reference)
    assert final.unverified_tokens == 0 and final.drafted > 0, final
    assert f"{final.completion_tokens} tokens" in printed, printed  # the CLI's summary line


def test_compose_up_every_service_healthy(stack: Stack) -> None:
    out = stack.compose("ps", "--all", "--format", "json").stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    if len(rows) == 1 and isinstance(rows[0], list):  # older compose: one JSON array
        rows = rows[0]
    state = {r["Service"]: (r["State"], r.get("Health", ""), r.get("ExitCode")) for r in rows}
    assert state.pop("credentials")[::2] == ("exited", 0), state
    assert set(state) == {"mosquitto", "verifier", "pi-1", "pi-2", "jetson-1"}, state
    assert all(s[:2] == ("running", "healthy") for s in state.values()), state


def test_generate_through_compose_is_token_exact(stack: Stack, reference: list[int]) -> None:
    final, printed = asyncio.run(generate_through_stack(stack, DEVICE))
    check_lossless(final, printed, reference)
    print(f"amd64 {DEVICE}: {final.tokens_per_s:.1f} tok/s, acceptance "
          f"{final.acceptance_rate:.2f}", file=sys.stderr)  # fmt: skip


def test_verifier_metrics_endpoint_answers(stack: Stack) -> None:
    text = ""
    for port in (stack.metrics_port, stack.metrics_port + 1):  # Docker picks one of the range
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
                assert resp.status == 200
                text = resp.read().decode()
                break
        except OSError:
            continue
    drafted = [line for line in text.splitlines() if line.startswith("sled_verifier_draft_tokens")]
    assert drafted and float(drafted[0].split()[-1]) > 0, text[:2000]


def wait_online(stack: Stack, device: str, online: bool, timeout_s: float) -> None:
    """Poll ``python -m sled.demo.healthcheck`` (the compose healthcheck) from this machine."""
    username, password = (quote(s, safe="") for s in stack.app_login)
    deadline = time.monotonic() + timeout_s
    argv = [
        sys.executable, "-m", "sled.demo.healthcheck", f"--device={device}",
        f"--broker-url=mqtt://{username}:{password}@127.0.0.1:{stack.broker_port}",
    ]  # fmt: skip
    while True:
        rc = subprocess.run(argv, capture_output=True, timeout=60).returncode
        if (rc == 0) == online:
            return
        assert time.monotonic() < deadline, f"{device} not {'on' if online else 'off'}line"
        time.sleep(3)


def verifier_statuses(stack: Stack, listen_s: float = 5.0) -> dict[str, VerifierStatus]:
    """The retained verifier statuses, as a device sees them."""

    async def read() -> dict[str, VerifierStatus]:
        out: dict[str, VerifierStatus] = {}
        async with MqttTransport(stack.mqtt()) as bus:
            await bus.subscribe(Topics("sled/v1").all_verifier_status())
            deadline = time.monotonic() + listen_s
            while (left := deadline - time.monotonic()) > 0:
                try:
                    msg = await asyncio.wait_for(anext(bus.messages()), left)
                except TimeoutError:
                    break
                status = decode(msg.payload, expect=VerifierStatus)
                out[status.verifier] = status
        return out

    return asyncio.run(read())


def test_scale_to_two_verifiers(stack: Stack, reference: list[int]) -> None:
    """``docker compose up --scale verifier=2``: two replicas, each named by its host name,
    both online with a capacity; every device's generation is token-exact on whichever
    replica its sticky assignment picked."""
    up = stack.compose(
        "up", "-d", "--wait", "--no-build", "--scale", "verifier=2", timeout_s=UP_TIMEOUT_S
    )
    assert up.returncode == 0, up.stdout + up.stderr
    online = {v: s for v, s in verifier_statuses(stack).items() if s.online}
    assert len(online) == 2, online
    assert all(s.capacity > 0 and s.started_at_ns > 0 for s in online.values()), online
    time.sleep(6)  # the edges' verifier_settle_s (5 s): the new replica takes new sessions
    for device in ("pi-1", "pi-2", "jetson-1"):
        final, printed = asyncio.run(generate_through_stack(stack, device))
        check_lossless(final, printed, reference)


def test_arm64_edge_under_qemu_is_token_exact(stack: Stack, reference: list[int]) -> None:
    """The arm64 edge image, emulated, serves pi-1 against the amd64 broker and verifier."""
    config = json.loads(stack.compose("config", "--format", "json").stdout)
    service = config["services"][DEVICE]
    stop = stack.compose("stop", DEVICE)
    assert stop.returncode == 0, stop.stderr
    wait_online(stack, DEVICE, online=False, timeout_s=120)
    name = f"{stack.project}-{DEVICE}-arm64"
    env = [f"--env={k}={v}" for k, v in service["environment"].items()]
    docker(
        "run", "-d", "--name", name, *EMULATED, f"--network={stack.project}_default",
        f"--volume={MODELS}:/models:ro", f"--volume={stack.project}_client-auth:/run/sled-auth:ro",
        *env, EDGE_ARM64,
    )  # fmt: skip
    try:
        start = time.monotonic()
        wait_online(stack, DEVICE, online=True, timeout_s=EMULATED_START_TIMEOUT_S)
        print(f"arm64 {DEVICE} online after {time.monotonic() - start:.0f} s", file=sys.stderr)
        final, printed = asyncio.run(generate_through_stack(stack, DEVICE))
        check_lossless(final, printed, reference)
        print(f"arm64 {DEVICE}: {final.tokens_per_s:.1f} tok/s, acceptance "
              f"{final.acceptance_rate:.2f}", file=sys.stderr)  # fmt: skip
        assert docker("inspect", "-f", "{{.State.Running}}", name).strip() == "true"
    finally:
        logs = subprocess.run(["docker", "logs", "--tail", "30", name], capture_output=True,
                              text=True, timeout=60)  # fmt: skip
        print(logs.stdout[-3000:], logs.stderr[-3000:], file=sys.stderr)
        docker("rm", "-f", name, check=False, timeout_s=120)


def test_compose_down_removes_the_stack(stack: Stack) -> None:
    down = stack.compose("down", "-v", "--timeout", "20")
    assert down.returncode == 0, down.stderr
    assert not stack.compose("ps", "--all", "-q").stdout.strip()
    volumes = docker("volume", "ls", "-q", "--filter", f"name={stack.project}_")
    assert not volumes.strip(), volumes
