"""The Docker route onto a Pi: deploy/cloud-init/user-data-docker.yaml."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_node.config import EdgeConfig
from tests.deploy.compose_model import COMPOSE_FILE, ROOT

USER_DATA = ROOT / "deploy" / "cloud-init" / "user-data-docker.yaml"


@pytest.fixture(scope="module")
def files() -> dict[str, dict[str, Any]]:
    text = USER_DATA.read_text()
    assert text.startswith("#cloud-config\n")
    data: dict[str, Any] = yaml.safe_load(text)
    assert "docker.io" in data["packages"]
    assert ["sh", "/usr/local/sbin/sled-run-edge-container"] in data["runcmd"]
    return {f["path"]: f for f in data["write_files"]}


def test_edge_toml_is_a_valid_edge_config(files: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    toml = tmp_path / "edge.toml"
    toml.write_text(files["/etc/sled/edge.toml"]["content"])
    config = EdgeConfig.load({}, env={}, toml_path=toml)
    assert config.device_id == config.username == "pi-1"
    assert config.drafter_dir == "/models/drafter-1l-onnx"  # -v /opt/sled/models:/models


def test_run_script_runs_the_compose_edge_image(files: dict[str, dict[str, Any]]) -> None:
    script = files["/usr/local/sbin/sled-run-edge-container"]["content"]
    assert files["/usr/local/sbin/sled-run-edge-container"]["permissions"] == "0755"
    proc = subprocess.run(["sh", "-n"], input=script, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    image = files["/etc/sled/edge-image.env"]["content"].strip().removeprefix("SLED_IMAGE=")
    assert image == compose["services"]["pi-1"]["image"]
    assert "SLED_CONFIG=/etc/sled/edge.toml" in script and "--tmpfs" not in script


def test_cloud_init_schema() -> None:
    if shutil.which("cloud-init") is None:
        pytest.skip("cloud-init is not installed (Debian: apt-get install cloud-init)")
    proc = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(USER_DATA)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Valid cloud-config" in proc.stdout
