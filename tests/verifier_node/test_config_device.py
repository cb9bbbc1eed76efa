"""The verifier's device and dtype settings: validated in the config, passed to the loader."""

from __future__ import annotations

import pytest

from runtime.config import ConfigError
from verifier_node.config import VerifierConfig
from verifier_node.node import RUNNER_OPTIONS


def test_defaults_are_exact_and_pick_the_device() -> None:
    config = VerifierConfig()
    assert (config.dtype, config.device, config.device_map) == ("float32", "auto", None)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1"])
def test_good_devices(device: str) -> None:
    assert VerifierConfig(device=device, dtype="auto").device == device


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "tpu:0", ""])
def test_bad_devices_are_refused(device: str) -> None:
    with pytest.raises(ConfigError, match="device"):
        VerifierConfig(device=device)


def test_device_map_is_auto_or_nothing() -> None:
    assert VerifierConfig(device_map="auto").device_map == "auto"
    with pytest.raises(ConfigError, match="device_map"):
        VerifierConfig(device_map="balanced")


def test_the_loader_gets_device_and_dtype() -> None:
    assert {"dtype", "device", "device_map"} <= set(RUNNER_OPTIONS)
