"""``sled credentials``: Mosquitto passwords and the ACL for devices, verifiers and apps.

    sled credentials --password-file /etc/mosquitto/sled.passwd \\
        --acl-file /etc/mosquitto/sled.acl --device pi-1 --device pi-2 --verifier v1 --app web

Each user named on the command line gets a new random password (printed once, or written
to ``--secrets`` as JSON); users already in the files keep theirs. The password file is
updated with ``mosquitto_passwd -b`` when it is installed, otherwise hashed here in
mosquitto's own format (``$7$``: PBKDF2-SHA512, 101 iterations, 12-byte salt). The ACL
is rewritten from the roles, which it records in ``# sled-…`` comments so the next run
can add or remove users.

Roles (``{p}`` is the topic prefix, default ``sled/v1``):

* **device** (username = device id; ``pattern`` lines with ``%u``): write
  ``{p}/dev/%u/draft[/+]``, ``{p}/dev/%u/out/+``, ``{p}/dev/%u/status``; read
  ``{p}/dev/%u/verdict`` and ``{p}/dev/%u/req``.
* **verifier** (trusted): read ``{p}/dev/+/draft`` (plain or ``$share/<group>/…``),
  ``{p}/dev/+/draft/+`` (assigned) and device statuses; write ``{p}/dev/+/verdict`` and
  ``{p}/verifier/+/status`` (``compose --scale`` replicas share a login, ids differ).
* **app**: read ``{p}/dev/+/out/+`` and all statuses; write ``{p}/dev/+/req``.
* everyone authenticated: read ``{p}/verifier/+/status`` (public, retained).

Mosquitto 2.0 checks ``read`` on delivery, never a subscription (a device may join a
``$share`` group; sticky assignment uses none; broker/README.md). ``pattern`` lines apply
to every user, so usernames are unique across roles (checked here). ``--dynsec FILE``
also writes the dynamic-security plugin's JSON (:mod:`sled.dynsec`, which checks subscriptions);
``--ca DIR`` makes a test CA and the broker's TLS certificate (:mod:`sled.certs`).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import grp
import hashlib
import hmac
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypedDict

from schemas import DEFAULT_PREFIX, SchemaError, Topics, check_id

ROLES: Final = ("device", "verifier", "app")
PBKDF2_ITERATIONS: Final = 101  # what mosquitto_passwd 2.0 writes
SALT_BYTES: Final = 12
PASSWORD_BYTES: Final = 18  # 24 URL-safe characters


def new_password() -> str:
    """A random URL-safe password that does not start with ``-``.

    One in 64 URL-safe tokens starts with a dash, and ``--password -xyz`` on a command line
    reads as an option, not a value: the node would refuse to start.
    """
    while True:
        word = secrets.token_urlsafe(PASSWORD_BYTES)
        if not word.startswith("-"):
            return word


class CredentialsError(ValueError):
    """A bad username, a role conflict, or a password file that cannot be updated."""


@dataclass(frozen=True, slots=True)
class Credential:
    """One broker user. ``password`` is the clear text, known only when just set."""

    username: str
    role: str
    password: str | None = None


# -- password hashes -------------------------------------------------------------------------


def hash_password(
    password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS
) -> str:
    """Mosquitto's ``$7$`` hash: ``$7$<iterations>$<base64 salt>$<base64 PBKDF2-SHA512>``."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, hashed: str) -> bool:
    """True when ``password`` matches a ``$7$`` (or legacy ``$6$`` SHA-512) hash."""
    parts = hashed.split("$")
    try:
        if len(parts) == 5 and parts[1] == "7":
            iterations, salt, digest = int(parts[2]), parts[3], parts[4]
            got = hashlib.pbkdf2_hmac(
                "sha512", password.encode(), base64.b64decode(salt), iterations
            )
        elif len(parts) == 4 and parts[1] == "6":
            salt, digest = parts[2], parts[3]
            got = hashlib.sha512(password.encode() + base64.b64decode(salt)).digest()
        else:
            return False
        return hmac.compare_digest(got, base64.b64decode(digest))
    except ValueError:
        return False


def read_password_file(path: Path) -> dict[str, str]:
    """``username -> hash`` of a mosquitto password file ({} when it does not exist)."""
    if not path.exists():
        return {}
    users: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#") and ":" in line:
            name, hashed = line.split(":", 1)
            users[name] = hashed
    return users


def update_password_file(
    path: Path,
    passwords: Mapping[str, str],
    *,
    remove: Iterable[str] = (),
    use_mosquitto_passwd: bool | None = None,
) -> None:
    """Set the passwords of ``passwords``' users and delete ``remove``; others stay.

    ``use_mosquitto_passwd``: None = use ``mosquitto_passwd -b`` when it is installed.
    """
    binary = shutil.which("mosquitto_passwd")
    if use_mosquitto_passwd is None:
        use_mosquitto_passwd = binary is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    if use_mosquitto_passwd:
        if binary is None:
            raise CredentialsError("mosquitto_passwd is not installed")
        if not path.exists():
            path.touch(mode=0o600)
        existing = read_password_file(path)
        for name in remove:
            if name in existing:
                _run_tool([binary, "-D", str(path), name])
        for name, password in passwords.items():
            _run_tool([binary, "-b", str(path), name, password])
        return
    users = read_password_file(path)
    for name in remove:
        users.pop(name, None)
    for name, password in passwords.items():
        users[name] = hash_password(password)
    _atomic_write(path, "".join(f"{name}:{hashed}\n" for name, hashed in users.items()), 0o600)


def _run_tool(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        shown = " ".join(argv[:4])  # tool, flag, file, user: never the password
        raise CredentialsError(f"{shown} failed: {(done.stderr or done.stdout).strip()}")


def _atomic_write(path: Path, text: str, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# -- ACL ---------------------------------------------------------------------------------------


def render_acl(
    topics: Topics,
    *,
    devices: Iterable[str] = (),
    verifiers: Iterable[str] = (),
    apps: Iterable[str] = (),
) -> str:
    """The Mosquitto ``acl_file`` for these users (devices only appear as comments)."""
    p = topics.prefix
    lines = [
        "# Mosquitto ACL for SLED, written by `sled credentials`: change it with that command.",
        "# Mosquitto checks `read` when it delivers a message (against the real topic) and",
        "# does not check subscription filters, so $share/<group>/... subscriptions need no",
        "# line of their own. `pattern` lines apply to every user; %u is the username.",
        f"# sled-prefix: {p}",
        "",
        "# Everyone authenticated: verifier statuses are public (retained, Last Will).",
        f"pattern read {p}/verifier/+/status",
        "",
        "# Devices (username = device id): their own drafts, results and status out;",
        "# their own verdicts and generation requests in.",
        f"pattern write {p}/dev/%u/draft",
        f"pattern write {p}/dev/%u/draft/+",
        f"pattern write {p}/dev/%u/out/+",
        f"pattern write {p}/dev/%u/status",
        f"pattern read {p}/dev/%u/verdict",
        f"pattern read {p}/dev/%u/req",
    ]
    lines += [f"# sled-device: {d}" for d in sorted(devices)]
    for name in sorted(verifiers):
        lines += [
            "",
            "# sled-role: verifier",
            f"user {name}",
            f"topic read {p}/dev/+/draft",
            f"topic read {p}/dev/+/draft/+",
            f"topic read {p}/dev/+/status",
            f"topic write {p}/dev/+/verdict",
            f"topic write {p}/verifier/+/status",
        ]
    for name in sorted(apps):
        lines += [
            "",
            "# sled-role: app",
            f"user {name}",
            f"topic read {p}/dev/+/out/+",
            f"topic read {p}/dev/+/status",
            f"topic write {p}/dev/+/req",
        ]
    return "\n".join(lines) + "\n"


def read_acl_roles(path: Path) -> tuple[str | None, dict[str, str]]:
    """The prefix and ``username -> role`` recorded in an ACL written by :func:`render_acl`."""
    if not path.exists():
        return None, {}
    prefix = None
    roles: dict[str, str] = {}
    pending_role = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("# sled-prefix:"):
            prefix = line.split(":", 1)[1].strip()
        elif line.startswith("# sled-device:"):
            roles[line.split(":", 1)[1].strip()] = "device"
        elif line.startswith("# sled-role:"):
            pending_role = line.split(":", 1)[1].strip()
        elif line.startswith("user ") and pending_role is not None:
            roles[line[5:].strip()] = pending_role
            pending_role = None
    return prefix, roles


# -- both files --------------------------------------------------------------------------------


def write_credentials(
    password_file: Path,
    acl_file: Path,
    *,
    prefix: str | None = None,
    devices: Iterable[str] = (),
    verifiers: Iterable[str] = (),
    apps: Iterable[str] = (),
    remove: Iterable[str] = (),
    passwords: Mapping[str, str] | None = None,
    use_mosquitto_passwd: bool | None = None,
    group: str | None = None,
) -> list[Credential]:
    """Add (or re-key) users, remove others, and rewrite the ACL; the users just set.

    ``passwords`` fixes some users' passwords (others get random ones). ``prefix``
    defaults to the one recorded in an existing ACL, else ``sled/v1``. ``group``: give
    the files to this group (mode 0640) so a broker running as that group can read them.
    """
    old_prefix, roles = read_acl_roles(acl_file)
    topics = Topics(prefix or old_prefix or DEFAULT_PREFIX)
    removed = set(remove)
    for name in removed:
        roles.pop(name, None)
    wanted = [("device", d) for d in devices]
    wanted += [("verifier", v) for v in verifiers] + [("app", a) for a in apps]
    new: dict[str, str] = {}
    for role, name in wanted:
        try:
            check_id(role, name)
        except SchemaError as exc:
            raise CredentialsError(f"{exc} (usernames are topic ids)") from exc
        if new.get(name, role) != role or roles.get(name, role) != role:
            other = new.get(name) or roles.get(name)
            raise CredentialsError(
                f"{name!r} cannot be both {other} and {role}: usernames are unique across roles"
            )
        new[name] = role
    roles.update(new)
    chosen = dict(passwords or {})
    unknown = set(chosen) - set(new)
    if unknown:
        raise CredentialsError(f"passwords given for users not named: {sorted(unknown)}")
    clear = {name: chosen.get(name) or new_password() for name in new}
    update_password_file(
        password_file, clear, remove=removed, use_mosquitto_passwd=use_mosquitto_passwd
    )
    by_role = {r: [n for n, rr in roles.items() if rr == r] for r in ROLES}
    acl = render_acl(
        topics, devices=by_role["device"], verifiers=by_role["verifier"], apps=by_role["app"]
    )
    _atomic_write(acl_file, acl, 0o640)
    _share_with(group, password_file, 0o640 if group else 0o600)
    _share_with(group, acl_file, 0o640 if group else 0o644)
    return [Credential(name, role, clear[name]) for name, role in new.items()]


def default_group() -> str | None:
    """``mosquitto`` when running as root and that group exists (the Debian broker user)."""
    if os.geteuid() != 0:
        return None
    try:
        grp.getgrnam("mosquitto")
    except KeyError:
        return None
    return "mosquitto"


def _share_with(group: str | None, path: Path, mode: int) -> None:
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError as exc:
            raise CredentialsError(f"no group {group!r}") from exc
        os.chown(path, -1, gid)
    os.chmod(path, mode)


# -- command ------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-file", type=Path, default=Path("sled.passwd"), help="mosquitto password_file"
    )
    parser.add_argument(
        "--acl-file", type=Path, default=Path("sled.acl"), help="mosquitto acl_file"
    )
    parser.add_argument(
        "--prefix", default=None, help=f"topic prefix (default: the ACL's, else {DEFAULT_PREFIX})"
    )
    parser.add_argument("--device", action="append", default=[], metavar="ID", help="device id")
    parser.add_argument("--verifier", action="append", default=[], metavar="ID", help="verifier")
    parser.add_argument("--app", action="append", default=[], metavar="NAME", help="app user")
    parser.add_argument("--remove", action="append", default=[], metavar="USER", help="delete")
    parser.add_argument(
        "--password", default=None, help="password for the one user named (default: random)"
    )
    parser.add_argument(
        "--secrets", type=Path, default=None, help="write the new passwords here (JSON, 0600)"
    )
    parser.add_argument(
        "--no-mosquitto-passwd",
        action="store_true",
        help="hash passwords in Python even when mosquitto_passwd is installed",
    )
    parser.add_argument(
        "--group",
        default=None,
        help="group that may read the files (default: mosquitto when run as root)",
    )
    parser.add_argument("--list", action="store_true", help="print the users and roles")
    parser.add_argument(
        "--dynsec",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write the dynamic-security plugin's JSON (checks subscriptions)",
    )
    parser.add_argument(
        "--ca",
        type=Path,
        default=None,
        metavar="DIR",
        help="make a test CA and a server certificate in DIR (ca.crt, server.crt, server.key)",
    )
    parser.add_argument(
        "--tls-host",
        action="append",
        default=[],
        metavar="HOST",
        help="host name or IP address the clients use, for the server certificate (repeat)",
    )


class NamedRoles(TypedDict):
    """User names by role, as ``write_credentials`` (and compose's ``init``) take them."""

    devices: list[str]
    verifiers: list[str]
    apps: list[str]


def named_roles(args: argparse.Namespace) -> NamedRoles:
    """The ``--device``/``--verifier``/``--app`` flags, by role."""
    return {"devices": args.device, "verifiers": args.verifier, "apps": args.app}


def run(args: argparse.Namespace) -> int:
    named = [*args.device, *args.verifier, *args.app]
    if args.password is not None and len(named) != 1:
        print("--password needs exactly one --device/--verifier/--app", file=sys.stderr)
        return 2
    if args.list:
        prefix, roles = read_acl_roles(args.acl_file)
        print(f"prefix {prefix or DEFAULT_PREFIX}")
        for name, role in sorted(roles.items(), key=lambda kv: (kv[1], kv[0])):
            print(f"{role:9} {name}")
        return 0
    if args.ca is not None:
        from sled.certs import ca_command

        rc = ca_command(args.ca, args.tls_host, args.group or default_group())
        if rc != 0 or (not named and not args.remove and args.dynsec is None):
            return rc
    if not named and not args.remove and args.dynsec is not None:
        return _dynsec_command(args)
    if not named and not args.remove:
        print("nothing to do: name users with --device/--verifier/--app", file=sys.stderr)
        return 2
    try:
        made = write_credentials(
            args.password_file,
            args.acl_file,
            prefix=args.prefix,
            **named_roles(args),
            remove=args.remove,
            passwords={named[0]: args.password} if args.password is not None else None,
            use_mosquitto_passwd=False if args.no_mosquitto_passwd else None,
            group=args.group or default_group(),
        )
    except (CredentialsError, OSError) as exc:
        print(f"sled credentials: {exc}", file=sys.stderr)
        return 1
    if args.secrets is not None:
        body = [{"username": c.username, "role": c.role, "password": c.password} for c in made]
        _atomic_write(args.secrets, json.dumps(body, indent=2) + "\n", 0o600)
        print(f"{len(made)} password(s) written to {args.secrets}")
    else:
        for c in made:
            print(f"{c.role:9} {c.username:24} {c.password}")
    print(f"password file {args.password_file}, ACL {args.acl_file}", file=sys.stderr)
    print("reload the broker to apply: kill -HUP <mosquitto pid>", file=sys.stderr)
    return 0 if args.dynsec is None else _dynsec_command(args)


def _dynsec_command(args: argparse.Namespace) -> int:
    from sled.dynsec import dynsec_command

    return dynsec_command(
        args.password_file, args.acl_file, args.dynsec, args.group or default_group()
    )
