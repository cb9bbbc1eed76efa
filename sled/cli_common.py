"""Pieces shared by the top-floor commands: broker flags, lazily loaded subcommands."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from types import ModuleType

from runtime.config import read_password_file
from runtime.transport import MqttConfig
from schemas import DEFAULT_PREFIX

# The project's own packages: an ImportError naming one of them means that part is not
# in this build (an edge-only install has no bench); any other missing module is a bug.
_OWN_PACKAGES = ("schemas", "runtime", "edge_node", "verifier_node", "sled", "bench")


def add_subcommands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    helps: Mapping[str, str],
    load: Callable[[str], ModuleType],
    *,
    run_attr: str,
) -> None:
    """One sub-parser per name in ``helps`` whose module ``load(name)`` imports; the
    module's ``run`` is stored as ``run_attr``.

    Each module exposes ``add_arguments(parser)`` and ``run(args) -> int``.
    """
    for name, help_text in helps.items():
        try:
            module = load(name)
        except ImportError as exc:
            if exc.name and exc.name.split(".")[0] in _OWN_PACKAGES:
                continue  # this subcommand is not part of this build
            raise
        p = sub.add_parser(name.split()[-1], help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(**{run_attr: module.run})


def add_broker_arguments(parser: argparse.ArgumentParser) -> None:
    """The same broker flags and ``SLED_*`` variables as ``sled edge`` / ``sled verifier``."""
    env = os.environ.get
    g = parser.add_argument_group("broker")
    g.add_argument(
        "--broker-url",
        "--broker",
        dest="broker",
        default=env("SLED_BROKER_URL", env("SLED_BROKER", "mqtt://127.0.0.1:1883")),
        help="broker URL, mqtt://host:port or mqtts:// (env SLED_BROKER_URL); log in with "
        "--username and SLED_PASSWORD or --password-file",
    )
    g.add_argument("--username", default=env("SLED_USERNAME"), help="(env SLED_USERNAME)")
    g.add_argument(
        "--password",
        default=env("SLED_PASSWORD"),
        help="(env SLED_PASSWORD; a flag shows in the process list: prefer the env or a file)",
    )
    g.add_argument(
        "--password-file",
        default=env("SLED_PASSWORD_FILE"),
        help="file whose first line is the broker password (env SLED_PASSWORD_FILE)",
    )
    g.add_argument(
        "--mqtt-protocol",
        "--protocol",
        dest="protocol",
        choices=("5", "3.1.1"),
        default=env("SLED_MQTT_PROTOCOL", "5"),
        help="MQTT protocol version (env SLED_MQTT_PROTOCOL)",
    )
    g.add_argument(
        "--topic-prefix",
        "--prefix",
        dest="prefix",
        default=env("SLED_TOPIC_PREFIX", DEFAULT_PREFIX),
        help=f"topic prefix (default {DEFAULT_PREFIX}; env SLED_TOPIC_PREFIX)",
    )
    g.add_argument(
        "--tls-ca", default=env("SLED_TLS_CA"), help="CA file for mqtts:// (env SLED_TLS_CA)"
    )


def mqtt_config(args: argparse.Namespace, **overrides: object) -> MqttConfig:
    """The broker flags as an ``MqttConfig``; the password from ``--password-file`` first."""
    password = args.password
    if getattr(args, "password_file", None):
        password = read_password_file(args.password_file)
    return MqttConfig.from_url(
        args.broker,
        username=args.username,
        password=password,
        protocol=args.protocol,
        tls_ca=args.tls_ca,
        **overrides,
    )
