"""The no-Docker edge install: cloud-init user-data, the systemd unit, the install script."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_node.config import EdgeConfig
from sled.demo.run import default_models_dir

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
USER_DATA = DEPLOY / "cloud-init" / "user-data.yaml"
UNIT = DEPLOY / "systemd" / "sled-edge.service"
INSTALL = DEPLOY / "install-edge.sh"
TOML_EXAMPLE = DEPLOY / "systemd" / "edge.toml.example"


@pytest.fixture(scope="module")
def user_data() -> dict[str, Any]:
    text = USER_DATA.read_text()
    assert text.startswith("#cloud-config\n")
    data: dict[str, Any] = yaml.safe_load(text)
    return data


def written(user_data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in user_data["write_files"]}


def unit_settings(text: str) -> dict[str, list[str]]:
    """``Section.Key -> [values]`` (systemd allows repeated keys, configparser does not)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key}", []).append(value)
    return settings


def test_user_data_has_what_an_edge_needs(user_data: dict[str, Any]) -> None:
    assert "python3-venv" in user_data["packages"]
    files = written(user_data)
    assert set(files) == {
        "/etc/sled/edge.toml",
        "/etc/systemd/system/sled-edge.service",
        "/usr/local/sbin/sled-install-edge",
    }
    assert files["/etc/sled/edge.toml"]["permissions"] == "0600"  # a password: install
    assert files["/usr/local/sbin/sled-install-edge"]["permissions"] == "0755"  # makes it 0640
    assert ["sh", "/usr/local/sbin/sled-install-edge"] in user_data["runcmd"]


def test_user_data_embeds_the_repository_files(user_data: dict[str, Any]) -> None:
    files = written(user_data)
    assert files["/etc/systemd/system/sled-edge.service"]["content"] == UNIT.read_text()
    assert files["/usr/local/sbin/sled-install-edge"]["content"] == INSTALL.read_text()
    assert files["/etc/sled/edge.toml"]["content"] == TOML_EXAMPLE.read_text()


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


def test_edge_toml_is_a_valid_edge_config(tmp_path: Path) -> None:
    config = EdgeConfig.load({}, env={}, toml_path=TOML_EXAMPLE)
    assert config.device_id == config.username == "pi-1"
    assert config.drafter_dir is not None
    # install-edge.sh links /opt/sled/models to the package's demo models
    name = Path(config.drafter_dir).relative_to("/opt/sled/models")
    assert (default_models_dir() / name / "model.onnx").is_file()


def test_unit_runs_the_installed_edge_command() -> None:
    settings = unit_settings(UNIT.read_text())
    script = INSTALL.read_text()
    venv = re.search(r'^VENV="\$PREFIX/(\S+)"', script, re.M)
    prefix = re.search(r"^PREFIX=(\S+)", script, re.M)
    assert venv is not None and prefix is not None
    assert settings["Service.ExecStart"] == [f"{prefix.group(1)}/{venv.group(1)}/bin/sled edge"]
    assert "SLED_CONFIG=/etc/sled/edge.toml" in settings["Service.Environment"]
    assert settings["Service.User"] == ["sled"] and "useradd" in script
    assert settings["Service.Restart"] == ["always"]
    assert settings["Service.KillSignal"] == ["SIGTERM"]  # the edge's clean stop
    assert settings["Install.WantedBy"] == ["multi-user.target"]
    assert "network-online.target" in settings["Unit.After"][0]


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    # The venv does not exist here: point ExecStart at a binary that does.
    unit = tmp_path / "sled-edge.service"
    unit.write_text(
        re.sub(r"^ExecStart=\S+", f"ExecStart={shutil.which('true')}", UNIT.read_text(), flags=re.M)
    )
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


def test_install_script_syntax_and_models_lookup() -> None:
    proc = subprocess.run(["sh", "-n", str(INSTALL)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    lookup = re.search(r"-c '(import pathlib, sled\.demo; [^']+)'", INSTALL.read_text())
    assert lookup is not None
    found = subprocess.run(
        [sys.executable, "-c", lookup.group(1)], capture_output=True, text=True, timeout=60
    )
    assert Path(found.stdout.strip()) == default_models_dir()
