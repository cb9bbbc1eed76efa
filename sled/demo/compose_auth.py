"""Broker logins for ``docker compose``: create them once, hand each container its own.

    python -m sled.demo.compose_auth init --password-file /etc/mosquitto/sled.passwd \\
        --acl-file /etc/mosquitto/sled.acl --client-dir /run/sled-auth \\
        --data-dir /var/lib/mosquitto --device pi-1 --verifier verifier-1 --app health
    python -m sled.demo.compose_auth exec app -- sled generate pi-1 "In the beginning"

``init`` (the compose file's one-shot ``credentials`` service, as root) writes, unless
they already exist (so a second ``docker compose up`` keeps everyone's password):

* the Mosquitto password file and ACL, with :func:`sled.credentials.write_credentials`
  (the files ``broker/mosquitto.conf`` names), owned by the broker's user;
* per user ``CLIENT_DIR/<user>.toml``: ``username`` and ``password`` under ``[edge]``
  (devices) or ``[verifier]``, the table each node reads from ``SLED_CONFIG``; app users
  get a top-level table and ``<user>.password`` (plain, for ``mosquitto_sub -P``); all
  owned by the nodes' user, mode 0600;
* the broker's persistence folder, given to the broker's user.

``exec USER -- CMD…`` runs CMD with ``SLED_USERNAME`` / ``SLED_PASSWORD`` from
``USER.toml`` (the variables ``sled generate`` and ``sled subscribe`` read).
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from pathlib import Path
from typing import Final

from sled.credentials import CredentialsError, named_roles, write_credentials

BROKER_UID: Final = 1883  # user and group "mosquitto" in the eclipse-mosquitto image
NODE_UID: Final = 10001  # user "sled" in edge_node/Dockerfile and verifier_node/Dockerfile
DEFAULT_CLIENT_DIR: Final = Path("/run/sled-auth")
TABLES: Final = {"device": "edge", "verifier": "verifier", "app": ""}


class AuthError(RuntimeError):
    """A login file is missing or unreadable."""


def client_file(client_dir: Path, user: str) -> Path:
    return client_dir / f"{user}.toml"


def render_client_toml(role: str, username: str, password: str) -> str:
    """The TOML a node reads (``[edge]`` / ``[verifier]`` table; apps: top level)."""
    table = TABLES[role]
    lines = [f"# broker login ({role}), written by sled.demo.compose_auth"]
    lines += [f"[{table}]"] if table else []
    lines += [f'username = "{username}"', f'password = "{password}"']
    return "\n".join(lines) + "\n"


def _own(path: Path, uid: int, mode: int) -> None:
    """chown (when root; otherwise leave the owner) and chmod."""
    if os.geteuid() == 0:
        os.chown(path, uid, uid)
    os.chmod(path, mode)


def init(
    *,
    password_file: Path,
    acl_file: Path,
    client_dir: Path,
    data_dir: Path | None,
    devices: list[str],
    verifiers: list[str],
    apps: list[str],
    prefix: str | None = None,
) -> bool:
    """Create the logins unless every file exists already; True when created."""
    users = [("device", d) for d in devices] + [("verifier", v) for v in verifiers]
    users += [("app", a) for a in apps]
    wanted = [password_file, acl_file] + [client_file(client_dir, u) for _, u in users]
    if data_dir is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
        _own(data_dir, BROKER_UID, 0o750)
    if all(p.is_file() for p in wanted):
        return False
    password_file.parent.mkdir(parents=True, exist_ok=True)
    acl_file.parent.mkdir(parents=True, exist_ok=True)
    client_dir.mkdir(parents=True, exist_ok=True)
    made = write_credentials(
        password_file,
        acl_file,
        prefix=prefix,
        devices=devices,
        verifiers=verifiers,
        apps=apps,
        use_mosquitto_passwd=False,  # the same $7$ hash, no mosquitto tools in the image
    )
    for path in (password_file, acl_file):
        _own(path, BROKER_UID, 0o600)
    for cred in made:
        assert cred.password is not None
        path = client_file(client_dir, cred.username)
        path.write_text(render_client_toml(cred.role, cred.username, cred.password))
        _own(path, NODE_UID, 0o600)
        if cred.role == "app":
            plain = client_dir / f"{cred.username}.password"
            plain.write_text(cred.password + "\n")
            _own(plain, NODE_UID, 0o600)
    return True


def read_login(client_dir: Path, user: str) -> tuple[str, str]:
    """``(username, password)`` from ``USER.toml`` (any table)."""
    path = client_file(client_dir, user)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise AuthError(f"cannot read the login of {user!r}: {exc}") from exc
    for table in (data, *(v for v in data.values() if isinstance(v, dict))):
        if isinstance(table.get("username"), str) and isinstance(table.get("password"), str):
            return table["username"], table["password"]
    raise AuthError(f"{path}: no username/password")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("init", help="create the broker logins once")
    p.add_argument("--password-file", type=Path, required=True, help="mosquitto password_file")
    p.add_argument("--acl-file", type=Path, required=True, help="mosquitto acl_file")
    p.add_argument("--client-dir", type=Path, default=DEFAULT_CLIENT_DIR, help="<user>.toml here")
    p.add_argument("--data-dir", type=Path, default=None, help="broker persistence folder")
    p.add_argument("--prefix", default=None, help="topic prefix of the ACL (default sled/v1)")
    p.add_argument("--device", action="append", default=[], metavar="ID")
    p.add_argument("--verifier", action="append", default=[], metavar="ID")
    p.add_argument("--app", action="append", default=[], metavar="NAME")
    e = sub.add_parser("exec", help="run a command with a user's login in SLED_USERNAME/PASSWORD")
    e.add_argument("user")
    e.add_argument("--client-dir", type=Path, default=DEFAULT_CLIENT_DIR)
    e.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS…")


INIT_PATHS = ("password_file", "acl_file", "client_dir", "data_dir")  # flag = init argument


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sled.demo.compose_auth")
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.action == "init":
        try:
            paths = {name: getattr(args, name) for name in INIT_PATHS}
            created = init(**paths, **named_roles(args), prefix=args.prefix)
        except (CredentialsError, OSError) as exc:
            print(f"compose_auth: {exc}", file=sys.stderr)
            return 1
        users = len(args.device) + len(args.verifier) + len(args.app)
        print(f"{users} broker logins {'created' if created else 'already there, kept'}")
        return 0
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("exec needs a command after --")
    try:
        username, password = read_login(args.client_dir, args.user)
    except AuthError as exc:
        print(f"compose_auth: {exc}", file=sys.stderr)
        return 1
    env = dict(os.environ, SLED_USERNAME=username, SLED_PASSWORD=password)
    try:
        os.execvpe(command[0], command, env)
    except OSError as exc:
        print(f"compose_auth: cannot run {command[0]!r}: {exc}", file=sys.stderr)
    return 127


if __name__ == "__main__":
    sys.exit(main())
