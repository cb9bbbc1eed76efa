"""EdgeConfig: defaults < TOML < env < flags, validation, CLI flags."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from edge_node.cli import add_arguments
from edge_node.config import ConfigError, EdgeConfig, config_from_args
from runtime.config import redact_url


def test_defaults_are_valid_and_documented() -> None:
    import dataclasses

    cfg = EdgeConfig(device_id="pi-1")
    assert cfg.mode == "sled" and cfg.mqtt_protocol == "5" and cfg.topic_prefix == "sled/v1"
    assert cfg.policy().timeout_floor_s == pytest.approx(0.2)
    for f in dataclasses.fields(EdgeConfig):
        assert f.metadata.get("help"), f"{f.name} is undocumented"
    assert EdgeConfig().device_id.startswith("edge-")


def test_precedence_toml_env_flags(tmp_path: Path) -> None:
    toml = tmp_path / "edge.toml"
    toml.write_text(
        '[edge]\ndevice_id = "from-toml"\nthreshold = 0.3\nmax_draft = 5\nasync_drafting = false\n'
    )
    env = {"SLED_THRESHOLD": "0.7", "SLED_MQTT_PROTOCOL": "3.1.1", "SLED_LOG_JSON": "yes"}
    cfg = EdgeConfig.load({"max_draft": 6, "threads": None}, env=env, toml_path=toml)
    assert cfg.device_id == "from-toml"  # TOML only
    assert cfg.threshold == 0.7  # env beats TOML
    assert cfg.max_draft == 6  # flag beats TOML
    assert cfg.async_drafting is False and cfg.log_json is True
    assert cfg.mqtt_protocol == "3.1.1" and cfg.threads == 1  # None flag = not given
    mqtt = cfg.mqtt()
    assert mqtt.protocol == "3.1.1" and mqtt.client_id == "sled-edge-from-toml"


def test_config_file_from_env(tmp_path: Path) -> None:
    toml = tmp_path / "edge.toml"
    toml.write_text('device_id = "top-level"\nbroker_url = "mqtts://broker:8883"\n')
    cfg = EdgeConfig.load(env={"SLED_CONFIG": str(toml)})
    assert cfg.device_id == "top-level" and cfg.mqtt().tls and cfg.mqtt().port == 8883


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SLED_THRESHOLD": "high"}, "SLED_THRESHOLD"),
        ({"SLED_THRESHOLD": "1.5"}, "threshold"),
        ({"SLED_DEVICE_ID": "bad/id"}, "device"),
        ({"SLED_MODE": "turbo"}, "mode"),
        ({"SLED_MQTT_PROTOCOL": "4"}, "mqtt_protocol"),
        ({"SLED_TIMEOUT_FLOOR_MS": "9000"}, "floor"),
        ({"SLED_ASYNC_DRAFTING": "maybe"}, "boolean"),
        ({"SLED_VERIFY_DEADLINE_S": "-1"}, "verify_deadline_s"),
        ({"SLED_MAX_PROMPT_TOKENS": "0"}, "max_prompt_tokens"),
        ({"SLED_PASSWORD_FILE": "/nonexistent/sled.pw"}, "password_file /nonexistent"),
        ({"SLED_CONTROLLER": "magic"}, "controller must be one of"),
        ({"SLED_TPOT_MS": "0"}, "tpot_ms"),
        ({"SLED_TPOT_MS": "-5"}, "tpot_ms"),
        ({"SLED_TPOT_MS": "inf"}, "tpot_ms"),
        ({"SLED_TPOT_MS": "nan"}, "tpot_ms"),
    ],
)
def test_bad_values_name_the_field(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EdgeConfig.load(env={"SLED_DEVICE_ID": "pi-1", **env})


def test_unknown_toml_key(tmp_path: Path) -> None:
    toml = tmp_path / "edge.toml"
    toml.write_text("treshold = 0.3\n")
    with pytest.raises(ConfigError, match="treshold"):
        EdgeConfig.load(env={}, toml_path=toml)


def test_cli_flags() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--device-id", "pi-9", "--no-async-drafting", "--max-draft", "3", "--prompt", "hi"]
    )
    cfg = config_from_args(args)
    assert (cfg.device_id, cfg.async_drafting, cfg.max_draft) == ("pi-9", False, 3)
    assert args.prompt == "hi"
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "turbo"])


def test_verification_deadline_from_env_reaches_the_policy() -> None:
    assert EdgeConfig(device_id="pi-1").policy().verify_deadline_s == 120.0  # a restart fits
    cfg = EdgeConfig.load(env={"SLED_DEVICE_ID": "pi-1", "SLED_VERIFY_DEADLINE_S": "30"})
    assert cfg.policy().verify_deadline_s == 30.0


@pytest.mark.parametrize(
    ("url", "logged"),
    [
        ("mqtt://ann:s3cret@broker:1883", "mqtt://ann:***@broker:1883"),
        ("mqtts://ann:p%40ss:word@b.example:8883/x", "mqtts://ann:***@b.example:8883/x"),
        ("mqtt://ann:a@b@host", "mqtt://ann:***@host"),  # the last @ ends the user info
        ("ann:s3cret@host:1883", "ann:***@host:1883"),  # no scheme: mqtt:// assumed
        ("mqtt://ann@host:1883", "mqtt://ann@host:1883"),  # a user name is no secret
        ("mqtt://host:1883", "mqtt://host:1883"),
        ("mqtt://host:1883/a@b:c", "mqtt://host:1883/a@b:c"),  # an @ after the authority
        ("mqtt://:pw@[::1]:99999", "mqtt://:***@[::1]:99999"),  # malformed: still redacted
    ],
)
def test_redact_url_hides_the_password(url: str, logged: str) -> None:
    assert redact_url(url) == logged


def test_password_file_keeps_the_password_off_the_command_line(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    cfg = EdgeConfig.load(env={"SLED_DEVICE_ID": "pi-1", "SLED_PASSWORD_FILE": str(secret)})
    assert cfg.password is None and cfg.mqtt().password == "s3cret"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = config_from_args(parser.parse_args(["--password-file", str(secret)]))
    assert flags.mqtt().password == "s3cret"
    url = EdgeConfig(device_id="pi-1", broker_url="mqtt://pi:s3cret@h:1883").broker_url_redacted
    assert "s3cret" not in url and url == "mqtt://pi:***@h:1883"
    with pytest.raises(ConfigError, match="not both"):
        EdgeConfig(device_id="pi-1", password="x", password_file=str(secret))
    secret.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        EdgeConfig(device_id="pi-1", password_file=str(secret))


@pytest.mark.parametrize(
    ("settings", "controller", "threshold"),
    [
        ({}, "adaptive", 0.1),  # no hand-set threshold by default
        ({"threshold": 0.3}, "threshold", 0.3),  # a threshold given: paper eq. 1 with it
        ({"controller": "threshold"}, "threshold", 0.1),
        ({"controller": "adaptive", "threshold": 0.3}, "adaptive", 0.3),
    ],
)
def test_controller_default_follows_the_threshold(
    settings: dict[str, object], controller: str, threshold: float
) -> None:
    policy = EdgeConfig(device_id="pi-1", **settings).policy()  # type: ignore[arg-type]
    assert (policy.controller, policy.threshold) == (controller, threshold)


def test_tpot_from_env() -> None:
    cfg = EdgeConfig.load(env={"SLED_DEVICE_ID": "pi-1", "SLED_TPOT_MS": "80"})
    assert cfg.tpot_ms == 80.0 and EdgeConfig(device_id="pi-1").tpot_ms is None
