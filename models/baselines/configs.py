"""Checked baseline configs: a model folder's config.json is not trusted before its values are.

`config_from_dict(Config, values, limits)` builds a baseline's frozen Config dataclass from a JSON
object, raising ValueError on an unknown key, a wrong type or a value outside `limits`, so an
oversized network is refused before anything is allocated (models.baselines.checkpoint).
"""
from __future__ import annotations

import math
from dataclasses import fields
from typing import Any, Mapping, TypeVar

T = TypeVar("T")
MAX_STRING = 128  # config strings are names and hashes


def _checked(name: str, value: object, default: object, limits: Mapping[str, tuple[float, float]]) -> object:
    """One field's value, of its default's type (tuples of ints as lists in JSON) and within limits."""
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or len(value) != len(default):
            raise ValueError(f"{name} must be a list of {len(default)} numbers, got {value!r:.60}")
        return tuple(_checked(name, v, d, limits) for v, d in zip(value, default))
    if isinstance(default, bool) or isinstance(default, str):
        if type(value) is not type(default):
            raise ValueError(f"{name} must be a {type(default).__name__}, got {value!r:.60}")
        if isinstance(value, str) and len(value) > MAX_STRING:
            raise ValueError(f"{name} is {len(value)} characters long (at most {MAX_STRING})")
        return value
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not numeric or (isinstance(default, int) and not isinstance(value, int)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite {type(default).__name__}, got {value!r:.60}")
    low, high = limits[name]
    if not low <= value <= high:
        raise ValueError(f"{name}={value} is outside {low}-{high}")
    return type(default)(value)


def config_from_dict(cls: type[T], values: Mapping[str, Any], limits: Mapping[str, tuple[float, float]]) -> T:
    """cls(**values) with every field checked; "arch" must be cls's own (ARCH default)."""
    known = {f.name: f.default for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown config keys {unknown[:3]}")
    if values.get("arch", known["arch"]) != known["arch"]:
        raise ValueError(f"arch must be {known['arch']!r}, got {values.get('arch')!r:.40}")
    return cls(**{name: _checked(name, values[name], known[name], limits) for name in values})  # type: ignore[call-arg]
