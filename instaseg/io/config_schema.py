"""The one config schema of instaseg: YAML parsing and checking a mapping against a config dataclass (known
keys only, each value of its annotated type), for model, training and serving configs alike.

Each config section is a plain dataclass whose annotations say what a value may be (`int`, `float`, `bool`,
`str`, `Literal[...]`, `X | None`, `tuple[T, ...]`, `tuple[T1, T2]`, `dict[str, Any]`, `dict[str, T]` (each
value checked as `T` under the key `section.name`), or another section dataclass). This module walks those
annotations, so every section gets the same precise messages: the full dotted key and the expected type. Range
checks that go beyond types live in each section's `__post_init__`.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A model, training or serving config that cannot be used: names the file or key and what was
    expected."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, but `1e-4` is a float (YAML 1.1 wants `1.0e-4`; everyone writes `1e-4`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text with the loader above; `source` names the file or override in error messages."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None


def parse_section(cls: type[T], data: Any, prefix: str) -> T:
    """Build dataclass `cls` from mapping `data`; `prefix` is the dotted key of the section (for messages)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"config key '{prefix}' must be a mapping of its options; got {_describe(data)}")
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in known:
            raise ConfigError(
                f"config key '{_join(prefix, key)}' is unknown; expected one of {', '.join(sorted(known))}"
            )
    missing = [
        name
        for name, f in known.items()
        if name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"config key '{_join(prefix, missing[0])}' is required")
    hints = typing.get_type_hints(cls)
    values = {key: check_value(hints[key], value, _join(prefix, key)) for key, value in data.items()}
    try:
        return cls(**values)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(f"config section '{prefix or '<top>'}': {exc}") from None


def check_value(annotation: Any, value: Any, key: str) -> Any:
    """Return `value` converted to `annotation` (int -> float, list -> tuple), or raise naming `key`."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return check_value(option, value, key)
            except ConfigError as exc:
                errors.append(exc)
        if len(options) == 1:
            raise errors[0]
        raise ConfigError(f"config key '{key}' must be {_type_name(annotation)}; got {_describe(value)}")
    if dataclasses.is_dataclass(annotation):
        return parse_section(annotation, value, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(
                f"config key '{key}' must be one of {', '.join(map(repr, args))}; got {value!r}"
            )
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(
                f"config key '{key}' must be a list ({_type_name(annotation)}); got {_describe(value)}"
            )
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(check_value(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"config key '{key}' must be a list of {len(args)} values; got {len(value)}")
        return tuple(
            check_value(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if origin is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise ConfigError(
                f"config key '{key}' must be a mapping with string keys; got {_describe(value)}"
            )
        if len(args) == 2 and args[1] is not Any:
            return {k: check_value(args[1], v, f"{key}.{k}") for k, v in value.items()}
        return dict(value)
    if annotation is Any:
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be true or false; got {_describe(value)}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' must be an integer; got {_describe(value)}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config key '{key}' must be a number; got {_describe(value)}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' must be a string; got {_describe(value)}")
        return value
    raise TypeError(f"config key '{key}': unsupported annotation {annotation!r} in the config schema")


def section_to_dict(section: Any) -> dict[str, Any]:
    """A dataclass section as plain YAML-friendly data (tuples become lists)."""
    return _plain(dataclasses.asdict(section))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_type_name(args[0])}"
        return f"list [{', '.join(_type_name(a) for a in args)}]"
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))
