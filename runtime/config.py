"""Loading a node's frozen config record from flags, ``SLED_*`` variables and TOML.

Precedence, highest first: command-line flag, environment variable, TOML file, default.

* flag ``--max-batch 8``        (one per field; ``--x/--no-x`` for booleans)
* env  ``SLED_MAX_BATCH=8``     (``SLED_`` + the field name in upper case)
* TOML ``max_batch = 8``        (top level or under ``[<table>]``; file from ``--config``
  or ``SLED_CONFIG``)

The record is a frozen dataclass whose fields are declared with :func:`setting` (a
default and a help text with the unit, optionally ``choices``); its ``__post_init__`` validates values and raises
:class:`ConfigError`. :class:`Loadable` gives it ``load`` and ``with_``. Used by both
nodes (on top of ``runtime.broker.BrokerConfig``), so flags and variables mean the same
everywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Final, Self, TypeVar

ENV_PREFIX: Final = "SLED_"

C = TypeVar("C")


class ConfigError(ValueError):
    """A config value that cannot be used; the message names the field and its source."""


def doc(text: str, **extra: Any) -> dict[str, Any]:
    """A field's metadata: its help text (with the unit) and e.g. ``choices``."""
    return {"help": text, **extra}


def setting(default: Any, text: str, **extra: Any) -> Any:
    """A config field: its default and :func:`doc` (``x: int = setting(3, "x, seconds")``)."""
    return dataclasses.field(default=default, metadata=doc(text, **extra))


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


class Loadable:
    """``load`` and ``with_`` for a node's frozen config dataclass (a mixin, no fields).

    ``TABLE`` names the TOML table the node reads (``[edge]``, ``[verifier]``).
    """

    __slots__ = ()
    TABLE: ClassVar[str]

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
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]
