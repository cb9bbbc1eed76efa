"""The same users and rules for Mosquitto's dynamic-security plugin (``sled credentials --dynsec``).

Mosquitto 2.0's ``acl_file`` never checks a subscription: a device may join the verifiers'
``$share`` group and, although it receives nothing, take its turns in the round robin, so
drafts are dropped. The dynamic-security plugin (``mosquitto_dynamic_security.so``, in
Debian's ``mosquitto`` package) checks subscriptions against ``subscribePattern`` rules,
and matches a ``$share/<group>/…`` filter literally: only a role with a ``$share/+/…`` rule
may join. Measured on Mosquitto 2.0.11: the device's SUBACK says "not authorized", the
verifier gets every draft.

This module writes the plugin's JSON from what ``sled credentials`` already keeps, the
password file (mosquitto's ``$7$`` hashes are the plugin's PBKDF2-SHA512 fields) and the
roles recorded in the ACL, so both stay one source. The plugin of 2.0.11 has no ``%u``
patterns: every device gets a role of its own. Publishing is denied unless a rule allows
it; receiving is allowed (a client only receives what it could subscribe to). The plugin
reads the file when the broker starts (restart it after a change; persistence keeps the
sessions) and rewrites it itself when changed through ``mosquitto_ctrl``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from schemas import DEFAULT_PREFIX, Topics


class DynsecError(ValueError):
    """A password hash the plugin cannot use, or a user without a role."""


def _client(username: str, hashed: str, rolename: str) -> dict[str, Any]:
    parts = hashed.split("$")
    if len(parts) != 5 or parts[1] != "7":
        raise DynsecError(f"{username}: only $7$ (PBKDF2-SHA512) hashes can be converted")
    return {
        "username": username,
        "textname": rolename,
        "password": parts[4],
        "salt": parts[3],
        "iterations": int(parts[2]),
        "roles": [{"rolename": rolename}],
    }


def role_rules(topics: Topics, role: str, name: str) -> list[tuple[str, str]]:
    """``(acltype, topic)`` pairs that mirror :func:`sled.credentials.render_acl`."""
    p, sub, send = topics.prefix, "subscribePattern", "publishClientSend"
    rules = [(sub, f"{p}/verifier/+/status")]  # everyone: verifier statuses
    if role == "device":
        d = f"{p}/dev/{name}"
        rules += [(send, f"{d}/draft"), (send, f"{d}/draft/+")]  # plain, assigned
        rules += [(send, f"{d}/out/+"), (send, f"{d}/status")]
        rules += [(sub, f"{d}/verdict"), (sub, f"{d}/req")]
    elif role == "verifier":
        rules += [(sub, f"{p}/dev/+/draft"), (sub, f"$share/+/{p}/dev/+/draft")]  # share groups
        rules += [(sub, f"{p}/dev/+/draft/+")]  # assigned drafts
        rules += [(sub, f"{p}/dev/+/status"), (send, f"{p}/dev/+/verdict")]
        rules += [(send, f"{p}/verifier/+/status")]  # replicas share a login
    elif role == "app":
        rules += [(sub, f"{p}/dev/+/out/+"), (sub, f"{p}/dev/+/status"), (send, f"{p}/dev/+/req")]
    else:
        raise DynsecError(f"{name}: unknown role {role!r}")
    return rules


def render_dynsec(
    prefix: str | None, roles: Mapping[str, str], hashes: Mapping[str, str]
) -> dict[str, Any]:
    """The plugin's JSON for these users (``username -> role``, ``username -> $7$ hash``)."""
    topics = Topics(prefix or DEFAULT_PREFIX)
    missing = sorted(set(roles) - set(hashes))
    if missing:
        raise DynsecError(f"users without a password: {missing}")
    clients, role_list = [], []
    for name in sorted(roles):
        rolename = f"sled-{roles[name]}-{name}"
        clients.append(_client(name, hashes[name], rolename))
        acls = [
            {"acltype": kind, "topic": topic, "priority": 0, "allow": True}
            for kind, topic in role_rules(topics, roles[name], name)
        ]
        role_list.append({"rolename": rolename, "acls": acls})
    return {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": True,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": clients,
        "groups": [],
        "roles": role_list,
    }


def write_dynsec(
    password_file: Path, acl_file: Path, dynsec_file: Path, *, group: str | None = None
) -> int:
    """Write the plugin's file from the password file and the ACL's roles; the user count.

    ``group``: the broker's group, which must read and (for ``mosquitto_ctrl``) write it.
    """
    from sled.credentials import _atomic_write, _share_with, read_acl_roles, read_password_file

    prefix, roles = read_acl_roles(acl_file)
    body = render_dynsec(prefix, roles, read_password_file(password_file))
    _atomic_write(dynsec_file, json.dumps(body, indent=2) + "\n", 0o600)
    _share_with(group, dynsec_file, 0o660 if group else 0o600)
    return len(roles)


def dynsec_command(
    password_file: Path, acl_file: Path, dynsec_file: Path, group: str | None
) -> int:
    """``sled credentials --dynsec FILE``: the exit status."""
    import sys

    from sled.credentials import CredentialsError

    try:
        n = write_dynsec(password_file, acl_file, dynsec_file, group=group)
    except (DynsecError, CredentialsError, OSError) as exc:
        print(f"sled credentials: {exc}", file=sys.stderr)
        return 1
    print(f"dynamic-security file {dynsec_file} ({n} users): restart the broker", file=sys.stderr)
    return 0
