"""The compose file's ``gpu`` profile: a CUDA verifier that reserves a GPU device.

Validated like the CPU stack (tests/deploy/test_compose.py), by the real compose binary
and the project's own config loader; no image is built (the CUDA one is several GB).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.compose_model import ROOT, host_path, mount_for, run_compose, service_argv
from verifier_node.config import VerifierConfig

GPU_SERVICE = "verifier-gpu"


@pytest.fixture(scope="module")
def gpu_config() -> dict[str, Any]:
    proc = run_compose("--profile", "gpu", "config", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr  # no warnings
    config: dict[str, Any] = json.loads(proc.stdout)
    return config


def test_the_gpu_verifier_only_runs_with_its_profile() -> None:
    proc = run_compose("config", "--services")
    assert proc.returncode == 0, proc.stderr
    assert GPU_SERVICE not in proc.stdout.split()
    assert "verifier" in proc.stdout.split()


def test_the_gpu_verifier_reserves_a_gpu(gpu_config: dict[str, Any]) -> None:
    service = gpu_config["services"][GPU_SERVICE]
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert "gpu" in device["capabilities"]
    assert device.get("count") == 1 or device.get("device_ids")
    assert device.get("driver", "nvidia") == "nvidia"


def test_the_gpu_image_takes_torch_from_a_cuda_index(gpu_config: dict[str, Any]) -> None:
    service = gpu_config["services"][GPU_SERVICE]
    build = service["build"]
    assert build["dockerfile"] == "verifier_node/Dockerfile"
    dockerfile = (ROOT / build["dockerfile"]).read_text()
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in dockerfile
    assert '--index-url "${TORCH_INDEX_URL}"' in dockerfile
    index = build["args"]["TORCH_INDEX_URL"]
    assert "/whl/cpu" not in index  # PyPI's Linux wheel or a /whl/cuNNN index
    assert service["image"] != gpu_config["services"]["verifier"]["image"]
    assert service_argv(service)[:2] == ["sled", "verifier"]


def test_the_gpu_verifier_env_is_a_valid_cuda_config(
    gpu_config: dict[str, Any], tmp_path: Path
) -> None:
    services = gpu_config["services"]
    service = services[GPU_SERVICE]
    env = {k: str(v) for k, v in service["environment"].items() if k != "SLED_CONFIG"}
    cfg = VerifierConfig.load({}, env=env)
    assert cfg.device == "cuda" and cfg.dtype == "auto"
    # sticky assignment beside the CPU verifier (no $share group), weighted by capacity
    assert cfg.share_group is None and cfg.capacity > 1
    assert cfg.verifier_id != services["verifier"]["environment"]["SLED_VERIFIER_ID"]
    auth = service_argv(services["credentials"])
    assert f"--verifier={cfg.verifier_id}" in auth  # it has a login and an ACL entry
    login = service["environment"]["SLED_CONFIG"]
    assert login.endswith(f"/{cfg.verifier_id}.toml") and mount_for(service, login)
    assert cfg.model_dir is not None
    model = host_path(service, cfg.model_dir, tmp_path)
    assert model is not None and (model / "config.json").is_file()
    assert any(str(p["target"]) == str(cfg.metrics_port) for p in service["ports"])
    test = service["healthcheck"]["test"]
    assert f"--verifier={cfg.verifier_id}" in test
