"""Loading a node's frozen config record from flags, ``SLED_*`` variables and TOML.

Precedence, highest first: command-line flag, environment variable, TOML file, default.

* flag ``--max-batch 8``        (one per field; ``--x/--no-x`` for booleans)
* env  ``SLED_MAX_BATCH=8``     (``SLED_`` + the field name in upper case)
* TOML ``max_batch = 8``        (top level or under ``[<table>]``; file from ``--config``
  or ``SLED_CONFIG``)

Each node's record (``edge_node.config.EdgeConfig``,
``verifier_node.config.VerifierConfig``) is a frozen dataclass built on
:class:`NodeConfig`: the broker connection (:class:`BrokerConfig`, with its
``MqttConfig`` builder) and logging are the same fields, flags, ``SLED_*`` variables,
TOML keys and defaults on both nodes. Fields are declared with :func:`setting` (a
default and a help text with the unit, optionally ``choices``); ``__post_init__``
validates values and raises :class:`ConfigError`.

Secrets: the broker password comes from ``SLED_PASSWORD`` or, better, a file
(``--password-file`` / ``SLED_PASSWORD_FILE``), never from a command line (where
``/proc/PID/cmdline`` shows it). Log a broker URL only through :func:`redact_url`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final, Self, TypeVar

from schemas import SchemaError, Topics, check_id

if TYPE_CHECKING:
    from runtime.transport import MqttConfig

ENV_PREFIX: Final = "SLED_"
PROTOCOLS: Final = ("5", "3.1.1")

C = TypeVar("C")


class ConfigError(ValueError):
    """A config value that cannot be used; the message names the field and its source."""


REDACTED: Final = "***"


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (``mqtt://ann:***@host:1883``).

    Plain string work (no URL parser that could reject a malformed URL and leave the
    caller to log it raw): the user info is everything before the last ``@`` of the
    authority, the password what follows its first ``:``.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0),
              default=len(rest))  # fmt: skip
    authority, tail = rest[:end], rest[end:]
    userinfo, at, host = authority.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}{sep}{user}:{REDACTED}@{host}{tail}"


def read_password_file(path: str | Path) -> str:
    """The password in ``path``: its first line (without the line break); not empty."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"password_file {path}: {exc}") from exc
    lines = text.splitlines()
    if not lines or not lines[0]:
        raise ConfigError(f"password_file {path}: the first line (the password) is empty")
    return lines[0]


def doc(text: str, **extra: Any) -> dict[str, Any]:
    """A field's metadata: its help text (with the unit) and e.g. ``choices``."""
    return {"help": text, **extra}


def setting(default: Any, text: str, **extra: Any) -> Any:
    """A config field: its default and :func:`doc` (``x: int = setting(3, "x, seconds")``)."""
    return dataclasses.field(default=default, metadata=doc(text, **extra))


def check_choices(record: Any) -> None:
    """Every field declared with ``choices`` holds one of them (flags, env and TOML alike)."""
    for f in dataclasses.fields(record):
        choices = f.metadata.get("choices")
        value = getattr(record, f.name)
        if choices is not None and value not in choices:
            raise ConfigError(f"{f.name} must be one of {', '.join(choices)}, got {value!r}")


def check_config_id(kind: str, value: str) -> None:
    """An id used in topics (``check_id``), as a :class:`ConfigError`."""
    try:
        check_id(kind, value)
    except SchemaError as exc:
        raise ConfigError(str(exc)) from exc


def field_names(cls: type[Any]) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


def field_type(cls: type[Any], name: str) -> Any:
    """The field's type without ``| None``."""
    hint = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def coerce(cls: type[Any], name: str, value: Any, source: str) -> Any:
    """Convert a string (env) or TOML value to the field's type."""
    kind = field_type(cls, name)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{name}: not a boolean: {value!r}")
        if isinstance(value, bool) and kind in (int, float):
            raise ValueError(f"{name}: not a number: {value!r}")
        if kind is int:
            return int(value)
        if kind is float:
            return float(value)
        return str(value)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from exc


def read_toml(cls: type[Any], path: Path, table: str) -> dict[str, Any]:
    """The file's values for ``cls`` (top level, or the ``[table]`` table)."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc
    values = data.get(table, data)
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path}: [{table}] must be a table")
    names = field_names(cls)
    unknown = sorted(k for k in values if k not in names and k != table)
    if unknown:
        raise ConfigError(f"config file {path}: unknown keys {', '.join(unknown)}")
    return {k: coerce(cls, k, v, f"config file {path}") for k, v in values.items() if k != table}


def load_config(
    cls: type[C],
    flags: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    toml_path: Path | str | None = None,
    table: str,
) -> C:
    """Merge defaults < TOML < env < flags (``None`` flags count as not given)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    path = toml_path or env.get(f"{ENV_PREFIX}CONFIG")
    if path:
        values.update(read_toml(cls, Path(path), table))
    names = field_names(cls)
    for name in sorted(names):
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = coerce(cls, name, raw, f"env {ENV_PREFIX}{name.upper()}")
    for name, value in (flags or {}).items():
        if value is not None and name in names:
            values[name] = value
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from exc


def add_config_arguments(parser: argparse.ArgumentParser, cls: type[Any], title: str) -> None:
    """One ``--flag`` per field (default None: not given); plus ``--config FILE``."""
    group = parser.add_argument_group(f"{title} (flags > {ENV_PREFIX}* env > TOML)")
    group.add_argument("--config", type=Path, default=None, help="TOML config file")
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind = field_type(cls, f.name)
        help_text = f"{f.metadata.get('help', '')} [env {ENV_PREFIX}{f.name.upper()}]"
        if kind is bool:
            group.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
            continue
        group.add_argument(
            flag,
            dest=f.name,
            type=kind if kind in (int, float) else str,
            default=None,
            choices=f.metadata.get("choices"),
            help=help_text,
        )


def config_from_args(cls: type[C], args: argparse.Namespace, table: str) -> C:
    flags = {name: getattr(args, name, None) for name in field_names(cls)}
    return load_config(cls, flags, toml_path=getattr(args, "config", None), table=table)


# -- the records both nodes share ------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """Where the broker is and how to log in. Times carry their unit in the name."""

    broker_url: str = setting(
        "mqtt://127.0.0.1:1883",
        "MQTT broker, mqtt://host:port or mqtts://host:port (TLS); the login from "
        "username + SLED_PASSWORD / password_file, not from the URL",
    )
    username: str | None = setting(None, "broker user name")
    password: str | None = setting(
        None, "broker password; prefer SLED_PASSWORD or password_file to a flag"
    )
    password_file: str | None = setting(
        None, "file whose first line is the broker password (keeps it off command lines)"
    )
    mqtt_protocol: str = setting("5", "MQTT protocol version: 5 or 3.1.1", choices=PROTOCOLS)
    topic_prefix: str = setting("sled/v1", "topic prefix")
    client_id: str | None = setting(
        None,
        "MQTT client id, stable for a persistent session; "
        "default sled-edge-DEVICE or sled-verifier-ID",
    )
    keepalive_s: int = setting(30, "MQTT keepalive, seconds (Last Will after ~1.5x of silence)")
    tls_ca: str | None = setting(None, "CA file (PEM) for mqtts://")

    def __post_init__(self) -> None:
        """Checks the broker fields and every field's ``choices`` (a node's fields too)."""
        try:
            Topics(self.topic_prefix)
        except SchemaError as exc:
            raise ConfigError(str(exc)) from exc
        check_choices(self)
        if self.keepalive_s < 1:
            raise ConfigError(f"keepalive_s must be >= 1, got {self.keepalive_s}")
        if self.password is not None and self.password_file is not None:
            raise ConfigError("set password or password_file, not both")
        self.login_password()  # a password file that cannot be read fails here

    def login_password(self) -> str | None:
        """The password: ``password``, else the first line of ``password_file``."""
        if self.password_file is not None:
            return read_password_file(self.password_file)
        return self.password

    @property
    def broker_url_redacted(self) -> str:
        """``broker_url`` without its password, for log lines."""
        return redact_url(self.broker_url)

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    def broker(self, default_client_id: str, *, persistent: bool = True) -> MqttConfig:
        """The transport's ``MqttConfig``; ``client_id`` falls back to ``default_client_id``.

        ``runtime.transport`` is imported here: aiomqtt is needed to connect, not to
        read a config (``--help`` stays light).
        """
        from runtime.transport import MqttConfig

        return MqttConfig.from_url(
            self.broker_url,
            username=self.username,
            password=self.login_password(),
            client_id=self.client_id or default_client_id,
            protocol=self.mqtt_protocol,
            keepalive_s=self.keepalive_s,
            tls_ca=self.tls_ca,
            persistent=persistent,
        )


@dataclass(frozen=True, slots=True)
class NodeConfig(BrokerConfig):
    """A node's config: the broker connection, logging, and loading from flags, env and
    TOML. ``TABLE`` names the TOML table the node reads (``[edge]``, ``[verifier]``)."""

    TABLE: ClassVar[str]

    log_level: str = setting("info", "log level: debug, info, warning")
    log_json: bool = setting(False, "log JSON lines instead of text")

    @classmethod
    def load(
        cls,
        flags: Mapping[str, Any] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        toml_path: Path | str | None = None,
    ) -> Self:
        """Merge defaults < TOML < env < flags (``None`` flags count as not given)."""
        return load_config(cls, flags, env=env, toml_path=toml_path, table=cls.TABLE)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Self:
        """The record from parsed ``--flags`` (see :func:`add_config_arguments`)."""
        return config_from_args(cls, args, cls.TABLE)

    @classmethod
    def from_cli(cls, args: argparse.Namespace, prefix: str) -> Self | None:
        """:meth:`from_args`, or None after printing ``prefix: why`` (the CLI exits 2)."""
        try:
            return cls.from_args(args)
        except ConfigError as exc:
            print(f"{prefix}: {exc}", file=sys.stderr)
            return None

    def with_(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)

    def configure_logs(self) -> None:
        """structlog at ``log_level`` (JSON lines with ``log_json``), for this process."""
        from runtime.logs import configure

        configure(self.log_level, json=self.log_json)
