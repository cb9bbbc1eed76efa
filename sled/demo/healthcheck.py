"""Container health: is this node's retained status on the broker ``online``?

    python -m sled.demo.healthcheck --device pi-1 --credentials /run/sled-auth/health.toml
    python -m sled.demo.healthcheck --verifier verifier-1

Reads the retained ``DeviceStatus`` / ``VerifierStatus`` (each node publishes it when it
connects; the broker replaces it with the node's Last Will when the node vanishes).
Exit status 0: online; 1: offline, no status, or the broker could not be reached.

The broker, protocol and prefix default to the node's own ``SLED_BROKER_URL``,
``SLED_MQTT_PROTOCOL`` and ``SLED_TOPIC_PREFIX``, so the check needs no settings of its
own in a container. Reading another client's status needs the *app* role of the ACL
(``sled credentials --app``); ``--credentials`` names a TOML file with ``username`` and
``password`` (as ``python -m sled.demo.compose_auth init`` writes them).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

DEFAULT_TIMEOUT_S = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--device", metavar="ID", help="check this edge node's status")
    who.add_argument(
        "--verifier", metavar="ID", help="check this verifier's status (auto: this host's name)"
    )
    parser.add_argument(
        "--broker-url",
        default=os.environ.get("SLED_BROKER_URL", "mqtt://127.0.0.1:1883"),
        help="broker (env SLED_BROKER_URL)",
    )
    parser.add_argument(
        "--protocol",
        choices=("5", "3.1.1"),
        default=os.environ.get("SLED_MQTT_PROTOCOL", "5"),
        help="MQTT version (env SLED_MQTT_PROTOCOL)",
    )
    parser.add_argument(
        "--prefix",
        default=os.environ.get("SLED_TOPIC_PREFIX", "sled/v1"),
        help="topic prefix (env SLED_TOPIC_PREFIX)",
    )
    parser.add_argument(
        "--credentials", type=Path, default=None, help="TOML file with username and password"
    )
    parser.add_argument(
        "--timeout-s", type=float, default=DEFAULT_TIMEOUT_S, help="give up after this long"
    )


async def check(args: argparse.Namespace) -> tuple[bool, str]:
    """``(online, why)`` from the retained status message."""
    from runtime.transport import MqttConfig, MqttTransport, TransportError
    from schemas import DeviceStatus, SchemaError, Topics, VerifierStatus, decode
    from sled.demo.compose_auth import AuthError, read_login

    username = password = None
    if args.credentials is not None:
        try:
            username, password = read_login(args.credentials.parent, args.credentials.stem)
        except AuthError as exc:
            return False, str(exc)
    topics = Topics(args.prefix)
    if args.device:
        topic, what = topics.device_status(args.device), f"device {args.device}"
    else:
        verifier = args.verifier
        if verifier == "auto":  # the verifier in this container (verifier_node.config)
            from verifier_node.config import host_id

            verifier = host_id()
        topic, what = topics.verifier_status(verifier), f"verifier {verifier}"
    cfg = MqttConfig.from_url(
        args.broker_url,
        username=username,
        password=password,
        protocol=args.protocol,
        client_id=f"sled-health-{uuid.uuid4().hex[:8]}",
        persistent=False,
        connect_timeout_s=args.timeout_s,
        op_timeout_s=args.timeout_s,
    )
    deadline = time.monotonic() + args.timeout_s
    try:
        async with MqttTransport(cfg) as bus:
            await bus.subscribe(topic)
            messages = bus.messages()
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False, f"{what}: no status on {topic} within {args.timeout_s:g} s"
                try:
                    msg = await asyncio.wait_for(anext(messages), remaining)
                except TimeoutError:
                    continue
                if msg.topic != topic:
                    continue  # not ours (a broker may deliver another session's leftovers)
                try:
                    status = decode(msg.payload, expect=(DeviceStatus, VerifierStatus))
                except SchemaError as exc:
                    return False, f"{what}: unreadable status: {exc.message}"
                assert isinstance(status, DeviceStatus | VerifierStatus)
                return status.online, f"{what}: {'online' if status.online else 'offline'}"
    except TransportError as exc:
        return False, f"{what}: broker {args.broker_url}: {exc}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sled.demo.healthcheck", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    online, why = asyncio.run(check(args))
    print(why)
    return 0 if online else 1


if __name__ == "__main__":
    sys.exit(main())
