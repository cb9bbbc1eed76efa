"""docker-compose.yml is valid for a real compose binary, and all it names exists here.

No docker engine is needed: the file is resolved by the compose binary, then every
command line is parsed by the project's own parsers, every ``SLED_*`` variable is loaded
by the node's config loader, every path is traced through its volume to this checkout,
and every Dockerfile ``COPY`` source exists.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from edge_node.config import EdgeConfig
from sled.cli import COMMANDS, build_parser
from sled.demo import compose_auth, healthcheck
from tests.deploy.compose_model import (
    ROOT,
    host_path,
    mount_for,
    resolved_config,
    run_compose,
    service_argv,
    service_dockerfile,
)
from verifier_node.config import VerifierConfig, host_id

EDGE_VARS = {f"SLED_{f.name.upper()}" for f in dataclasses.fields(EdgeConfig)} | {"SLED_CONFIG"}
VERIFIER_VARS = {f"SLED_{f.name.upper()}" for f in dataclasses.fields(VerifierConfig)}
VERIFIER_VARS |= {"SLED_CONFIG"}
CLIENT_VARS = {"SLED_BROKER", "SLED_USERNAME", "SLED_PASSWORD", "SLED_PROTOCOL", "SLED_PREFIX"}


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return resolved_config()


@pytest.fixture(scope="module")
def services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(config["services"])


def role(service: dict[str, Any]) -> str:
    """edge, verifier, auth, broker or client, from what the service runs."""
    argv = service_argv(service)
    if argv[:2] == ["sled", "edge"]:
        return "edge"
    if argv[:2] == ["sled", "verifier"]:
        return "verifier"
    if argv[:3] == ["python", "-m", "sled.demo.compose_auth"]:
        return "auth" if argv[3] == "init" else "client"
    if argv[:1] == ["mosquitto"]:
        return "broker"
    raise AssertionError(f"unexpected command {argv}")


def by_role(services: dict[str, dict[str, Any]], wanted: str) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if role(s) == wanted}


def auth_args(services: dict[str, dict[str, Any]]) -> argparse.Namespace:
    (auth,) = by_role(services, "auth").values()
    parser = argparse.ArgumentParser()
    compose_auth.add_arguments(parser)
    return parser.parse_args(service_argv(auth)[3:])


# -- the file ------------------------------------------------------------------------------


def test_compose_config_is_valid() -> None:
    proc = run_compose("config", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr  # no warnings (obsolete keys, unset vars)


def test_the_stack(services: dict[str, dict[str, Any]]) -> None:
    assert len(by_role(services, "broker")) == 1
    assert len(by_role(services, "verifier")) == 1
    assert len(by_role(services, "edge")) >= 3
    assert len(by_role(services, "auth")) == 1
    (broker,) = by_role(services, "broker").values()
    assert broker["image"].startswith("eclipse-mosquitto:")


def test_dependencies_and_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    (broker_name,) = by_role(services, "broker")
    (auth_name,) = by_role(services, "auth")
    assert services[broker_name]["depends_on"][auth_name]["condition"] == (
        "service_completed_successfully"
    )
    for name, service in services.items():
        if role(service) in ("edge", "verifier", "broker"):
            assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
            assert service.get("restart") == "unless-stopped", name
        if role(service) in ("edge", "verifier", "client"):
            assert service["depends_on"][broker_name]["condition"] == "service_healthy", name


# -- images ------------------------------------------------------------------------------


def test_dockerfiles_copy_existing_sources(services: dict[str, dict[str, Any]]) -> None:
    seen = set()
    for name, service in services.items():
        dockerfile = service_dockerfile(service)
        if dockerfile is None:
            continue
        assert dockerfile.path.is_file(), name
        seen.add(dockerfile.path.relative_to(ROOT).as_posix())
        for sources, _dest in dockerfile.copies:
            for src in sources:
                assert (dockerfile.context / src).exists(), f"{dockerfile.path}: COPY {src}"
        assert dockerfile.entrypoint[:1] == ["sled"] and dockerfile.entrypoint[1] in COMMANDS
        assert dockerfile.user not in (None, "root", "0", "0:0"), f"{name}: runs as root"
    assert seen == {"edge_node/Dockerfile", "verifier_node/Dockerfile"}


def test_images_install_what_the_tests_install() -> None:
    edge = (ROOT / "edge_node/Dockerfile").read_text()
    verifier = (ROOT / "verifier_node/Dockerfile").read_text()
    assert 'pip install ".[edge]"' in edge and "torch==" not in edge
    assert "--platform linux/amd64,linux/arm64" in edge
    assert '"torch==2.13.0"' in verifier and "download.pytorch.org/whl/cpu" in verifier
    assert 'pip install ".[verifier]"' in verifier
    script = (ROOT / "scripts/make-edge-venv.sh").read_text()
    assert 'pip install -q "$repo[edge]"' in script


# -- commands -------------------------------------------------------------------------------


def test_every_sled_command_parses(services: dict[str, dict[str, Any]]) -> None:
    parser = build_parser()
    for name, service in services.items():
        argv = service_argv(service)
        if argv[:1] == ["sled"]:
            parser.parse_args(argv[1:])  # SystemExit (test error) on an unknown flag
        elif role(service) == "client":
            args = auth_args_for(service)
            command = args.command[1:] if args.command[:1] == ["--"] else args.command
            assert command[:1] == ["sled"], name
            assert args.user in auth_args(services).app, name
            parser.parse_args(command[1:])


def auth_args_for(service: dict[str, Any]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    compose_auth.add_arguments(parser)
    return parser.parse_args(service_argv(service)[3:])


def test_healthchecks_parse(services: dict[str, dict[str, Any]]) -> None:
    users = auth_args(services)
    for name, service in services.items():
        test = service.get("healthcheck", {}).get("test")
        if not test:
            continue
        if test[0] == "CMD":
            assert test[1:4] == ["python", "-m", "sled.demo.healthcheck"], name
            parser = argparse.ArgumentParser()
            healthcheck.add_arguments(parser)
            args = parser.parse_args(test[4:])
            if args.device:
                assert args.device == service["environment"]["SLED_DEVICE_ID"], name
            else:
                assert args.verifier == service["environment"]["SLED_VERIFIER_ID"], name
            assert args.credentials.stem in users.app, name
            assert mount_for(service, str(args.credentials)) is not None, name
        else:
            shell = test[1]
            assert "mosquitto_sub" in shell and " -E " in shell, name
            user = re.search(r"-u (\S+)", shell)
            assert user is not None and user.group(1) in users.app, name
            for path in re.findall(r"(/run/\S+?)\)", shell):
                assert mount_for(service, path) is not None, f"{name}: {path} not mounted"


# -- configuration ----------------------------------------------------------------------------


def node_env(service: dict[str, Any], allowed: set[str]) -> dict[str, str]:
    env = {k: str(v) for k, v in service.get("environment", {}).items()}
    unknown = sorted(k for k in env if k.startswith("SLED_") and k not in allowed)
    assert unknown == [], f"variables no config reads: {unknown}"
    return {k: v for k, v in env.items() if k != "SLED_CONFIG"}


def test_edge_env_is_a_valid_edge_config(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    users = auth_args(services)
    devices = set()
    for name, service in by_role(services, "edge").items():
        cfg = EdgeConfig.load({}, env=node_env(service, EDGE_VARS))
        devices.add(cfg.device_id)
        assert cfg.device_id in users.device, f"{name}: no login for {cfg.device_id}"
        assert cfg.drafter_dir is not None
        drafter = host_path(service, cfg.drafter_dir, tmp_path)
        assert drafter is not None and (drafter / "model.onnx").is_file(), name
        assert (drafter / "manifest.json").is_file(), name
        login = service["environment"]["SLED_CONFIG"]
        assert login == f"{users.client_dir}/{cfg.device_id}.toml", name
        assert mount_for(service, login) is not None, name
        assert cfg.broker_url.startswith("mqtt://mosquitto:"), name
    assert len(devices) == len(by_role(services, "edge"))  # one device id per service


def test_verifier_env_is_a_valid_verifier_config(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    users = auth_args(services)
    for name, service in by_role(services, "verifier").items():
        env = node_env(service, VERIFIER_VARS)
        cfg = VerifierConfig.load({}, env=env)
        if env["SLED_VERIFIER_ID"] == "auto":  # replicas (--scale): one id per host name
            assert cfg.verifier_id == host_id(), name
        login = Path(service["environment"]["SLED_CONFIG"])
        assert login.stem in users.verifier, name
        assert cfg.model_dir is not None
        model = host_path(service, cfg.model_dir, tmp_path)
        assert model is not None and (model / "config.json").is_file(), name
        assert (model / "tokenizer.json").is_file(), name
        assert login.parent == Path(users.client_dir), name
        if cfg.metrics_port:
            assert any(str(p["target"]) == str(cfg.metrics_port) for p in service["ports"])


def test_client_env(services: dict[str, dict[str, Any]]) -> None:
    for service in by_role(services, "client").values():
        env = service.get("environment", {})
        assert set(env) <= CLIENT_VARS, sorted(set(env) - CLIENT_VARS)


def test_broker_config_matches_the_logins(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    (broker,) = by_role(services, "broker").values()
    argv = service_argv(broker)
    conf_path = argv[argv.index("-c") + 1]
    conf = host_path(broker, conf_path, tmp_path)
    assert conf is not None and conf == ROOT / "broker" / "compose.conf"
    settings: dict[str, str] = {}
    for line in conf.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.strip().partition(" ")
            settings.setdefault(key, value.strip())
    users = auth_args(services)
    assert settings["password_file"] == str(users.password_file)
    assert settings["acl_file"] == str(users.acl_file)
    assert settings["allow_anonymous"] == "false"
    assert settings["persistence_location"].rstrip("/") == str(users.data_dir)
    (auth,) = by_role(services, "auth").values()
    for path in (users.password_file, users.acl_file, users.data_dir):
        in_auth, in_broker = mount_for(auth, str(path)), mount_for(broker, str(path))
        assert in_auth is not None and in_broker is not None, path
        assert in_auth[0]["source"] == in_broker[0]["source"], path  # the same volume
    listener = settings["listener"].split()[0]
    assert any(str(p["target"]) == listener for p in broker["ports"])
