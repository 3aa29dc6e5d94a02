"""Checking config dataclasses field by field, so a bad value is named before any work.

:func:`check_fields` reads each field's annotation (``int``, ``float``, ``bool``, ``str``,
unions of them, ``X | None``, ``tuple[int, ...]``) and checks the value's type, that numbers are
finite, and the field's range when one is given. A wrong value raises :class:`ConfigError`
naming the field, the value and what is allowed. :func:`config_with_overrides` gives the config
a function runs with from its ``config`` argument and its ``**overrides`` (fields by name).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from typing import Any, TypeVar

_SIMPLE = (bool, int, float, str)
_C = TypeVar("_C")


class ConfigError(ValueError):
    """A config field with a wrong type or value; the message names the field."""


def _allowed(annotation: Any) -> tuple[set[type], bool] | None:
    """The simple types a field may hold and whether None is allowed; None: not checked."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        out: set[type] = set()
        none_ok = False
        for arg in typing.get_args(annotation):
            if arg is type(None):
                none_ok = True
                continue
            inner = _allowed(arg)
            if inner is None:
                return None
            out |= inner[0]
        return out, none_ok
    if annotation in _SIMPLE:
        return {annotation}, False
    return None


def _type_ok(value: Any, allowed: set[type]) -> bool:
    if isinstance(value, bool):
        return bool in allowed
    if isinstance(value, int):
        return int in allowed or float in allowed
    if isinstance(value, float):
        return float in allowed
    return any(isinstance(value, t) for t in allowed)


def _names(allowed: set[type], none_ok: bool) -> str:
    order = {"bool": 0, "int": 1, "float": 2, "str": 3}
    words = sorted((t.__name__ for t in allowed), key=lambda w: order.get(w, 9))
    words = ["an integer" if w == "int" else "a number" if w == "float" else w for w in words]
    if "an integer" in words and "a number" in words:
        words.remove("an integer")
    return " or ".join(words + (["None"] if none_ok else []))


def check_fields(
    obj: Any,
    ranges: dict[str, tuple[float | None, float | None]] | None = None,
    what: str | None = None,
) -> None:
    """Check every field of a dataclass instance against its annotation and ``ranges``.

    Args:
        obj: a dataclass instance (call this from ``__post_init__``).
        ranges: field -> ``(low, high)``, inclusive, either end ``None`` for unbounded.
        what: the config's name in messages (default: the class name).

    Raises:
        ConfigError: naming the field, the bad value and what is allowed.
    """
    what = what or type(obj).__name__
    ranges = ranges or {}
    module = sys.modules.get(type(obj).__module__)
    try:
        hints = typing.get_type_hints(type(obj), vars(module) if module else None)
    except Exception:  # an annotation we cannot resolve: check ranges only
        hints = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        spec = _allowed(hints.get(f.name))
        if spec is not None:
            allowed, none_ok = spec
            if value is None:
                if not none_ok:
                    raise ConfigError(f"{what}.{f.name} must be {_names(allowed, False)}, not None")
                continue
            if not _type_ok(value, allowed):
                raise ConfigError(
                    f"{what}.{f.name} must be {_names(allowed, none_ok)} "
                    f"(got {type(value).__name__} {value!r})"
                )
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{what}.{f.name} must be a finite number (got {value!r})")
        if f.name in ranges and isinstance(value, int | float) and not isinstance(value, bool):
            low, high = ranges[f.name]
            if (low is not None and value < low) or (high is not None and value > high):
                where = (
                    f">= {low}"
                    if high is None
                    else f"<= {high}"
                    if low is None
                    else f"between {low} and {high}"
                )
                raise ConfigError(f"{what}.{f.name} must be {where} (got {value!r})")


def check_sequence(value: Any, item: type, field: str) -> tuple:
    """``value`` as a tuple of ``item`` (a list or tuple, not a bare string); else a
    :class:`ConfigError` naming ``field``."""
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ConfigError(
            f"{field} must be a list of {item.__name__} (got {type(value).__name__} {value!r})"
        )
    bad = [v for v in value if not isinstance(v, item) or isinstance(v, bool) and item is not bool]
    if bad:
        raise ConfigError(f"{field} must hold only {item.__name__} values (got {bad!r})")
    return tuple(value)


def require_keys(
    d: Any, keys: typing.Sequence[str], error: type[Exception], what: str, name: str, fix: str
) -> None:
    """Refuse a saved record (``setup.json``, ``cell.json``) that is not a dict or lacks one of
    ``keys``: ``error`` names the record (``name``, from what it has), the missing keys and the
    ``fix``. ``what``: the record and what it holds, e.g. ``"a cell is a table of its measures"``.
    """
    if not isinstance(d, dict):
        raise error(f"{what} (got {type(d).__name__})")
    missing = [k for k in keys if k not in d]
    if missing:
        raise error(f"{name} lacks {missing}: written by another version of circuitlens; {fix}")


def config_with_overrides(
    cls: type[_C],
    config: _C | None,
    overrides: dict[str, Any],
    caller: str = "",
    also: tuple[str, ...] = (),
) -> _C:
    """The config a function runs with: ``config`` (``cls()`` when None) with the fields named in
    ``overrides`` (the function's ``**overrides``) replaced.

    Args:
        caller: the function's name, for the messages.
        also: other names the caller takes by keyword (listed in the message as valid).

    Raises:
        TypeError: ``config`` is not a ``cls`` (e.g. an option passed by position where the
            config now stands), or an override names no field of ``cls`` (as Python refuses an
            unknown keyword; the message names the valid ones).
        ConfigError: a field's value is refused (as ``cls`` refuses it).
    """
    valid = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    who = f"{caller}: " if caller else ""
    if config is None:
        config = cls()
    elif not isinstance(config, cls):
        raise TypeError(
            f"{who}config must be a {cls.__name__} or None (got {type(config).__name__} "
            f"{config!r}); pass its options by name: {', '.join(f'{k}=...' for k in valid)}"
        )
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        extra = f", and {', '.join(also)}" if also else ""
        raise TypeError(
            f"{who}unknown {cls.__name__} option(s) {', '.join(unknown)}; "
            f"valid: {', '.join(valid)}{extra}"
        )
    return dataclasses.replace(config, **overrides) if overrides else config
