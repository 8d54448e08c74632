"""Building a frozen dataclass tree from YAML-like data, with errors that name the dotted key.

The constraints live on the types: `Literal[...]` for choices, `Annotated[T, check, ...]` for value checks
(a check returns None or the reason the value is wrong), `X | None` for optional values and sections, and a
section's own `check()` method (returning {leaf: reason}) for rules that relate several of its keys.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable


class ConfigError(ValueError):
    """A config file or override is invalid; the message starts with the dotted key."""


Check = Callable[[object], str | None]
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def positive(value) -> str | None:
    return None if value > 0 else f"must be positive, got {value!r}"


def non_negative(value) -> str | None:
    return None if value >= 0 else f"must not be negative, got {value!r}"


def in_range(low: float, high: float, *, low_open: bool = False, high_open: bool = True) -> Check:
    """A check that the value lies in [low, high) (or with the ends open/closed as given)."""
    def check(value) -> str | None:
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if above and below:
            return None
        return f"must be in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}, got {value!r}"
    return check


def min_side(pixels: int) -> Check:
    def check(value) -> str | None:
        return None if min(value) >= pixels else f"each side must be at least {pixels} pixels, got {value!r}"
    return check


PosInt = typing.Annotated[int, positive]
PosFloat = typing.Annotated[float, positive]
NonNegFloat = typing.Annotated[float, non_negative]
Fraction = typing.Annotated[float, in_range(0.0, 1.0)]
Device = typing.Literal["auto", "cpu", "cuda"]


def build(cls: type, raw: object, prefix: str = ""):
    """An instance of the dataclass `cls` from a mapping; missing keys keep their defaults."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (known: {', '.join(sorted(names))})")
    values = {}
    for name in names & set(raw):
        hint = hints[name]
        section = next((a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)), hint)  # X | None
        if raw[name] is None and section is not hint:
            values[name] = None
        elif dataclasses.is_dataclass(section):
            values[name] = build(section, raw[name], f"{prefix}{name}.")
        else:
            values[name] = coerce(hint, raw[name], prefix + name)
    instance = cls(**values)
    problems = instance.check() if hasattr(instance, "check") else {}
    for leaf, reason in problems.items():
        raise ConfigError(f"{prefix}{leaf}: {reason}")
    return instance


def apply(cfg, pairs: dict):
    """A copy of the dataclass tree `cfg` with dotted keys replaced, rebuilt (so validated) from scratch."""
    data = dataclasses.asdict(cfg)
    for key, value in pairs.items():
        node = data
        *parts, leaf = key.split(".")
        for part in parts:
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"{key}: unknown key")
            node = node[part]
            if node is None:  # an optional section switched off: setting one of its keys switches it on
                raise ConfigError(f"{key}: section {part!r} is null; set it as a whole, e.g. {part}={{...}}")
        if not isinstance(node, dict) or leaf not in node:
            raise ConfigError(f"{key}: unknown key")
        node[leaf] = value
    return build(type(cfg), data)


def coerce(hint, value, key: str):
    """`value` as the type `hint` says, checked by the hint's Literal choices and Annotated checks."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        value = coerce(args[0], value, key)
        for check in hint.__metadata__:
            reason = check(value)
            if reason:
                raise ConfigError(f"{key}: {reason}")
        return value
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        reasons = []
        for option in (a for a in args if a is not type(None)):  # the first alternative that takes the value
            try:
                return coerce(option, value, key)
            except ConfigError as error:
                reasons.append(str(error).removeprefix(f"{key}: "))
        raise ConfigError(f"{key}: {' or '.join(dict.fromkeys(reasons))}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(args[0], v, key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
        return tuple(coerce(a, v, key) for a, v in zip(args, value, strict=True))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str) and _NUMBER.match(value.strip()):  # YAML 1.1 reads 1e-2 (no dot) as a string
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {hint}")
