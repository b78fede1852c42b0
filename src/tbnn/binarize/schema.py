"""Typed config fields that carry their own range or allowed set, checked in one place.

A schema is a dataclass whose fields are made with ``spec``; ``check_fields`` checks a
value (an instance or a mapping) against it and raises ValueError naming the key, the value
and what is allowed; a float must be finite in every field (inf and NaN are never accepted).
The Hydra schemas of tbnn (``tbnn.config``) and ``BinarizeConfig`` use it, so every range is
written once, beside its field.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, field, fields
from typing import Any, Callable, Iterable

_BOUNDS = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
           "le": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}


def spec(default=MISSING, *, factory: Callable | None = None, ge=None, gt=None, le=None, lt=None,
         choices: Iterable | Callable[[], Iterable] | None = None, allow: tuple = (), length: int | None = None,
         nonempty: bool = False):
    """A dataclass field with its rule: bounds (``ge``/``gt``/``le``/``lt``, applied to each item
    of a list), ``choices`` (a collection, e.g. a registry, or a function returning one),
    ``allow`` (extra values accepted as they are, e.g. -1 for "no limit"), the ``length`` of
    a list, ``nonempty`` for strings. ``None`` always passes (optional fields)."""
    rule = {k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt, choices=choices, length=length).items()
            if v is not None}
    rule.update({k: v for k, v in dict(allow=allow, nonempty=nonempty).items() if v})
    if factory is not None:
        return field(default_factory=factory, metadata={"rule": rule})
    return field(default=default, metadata={"rule": rule})


def describe(rule: dict) -> str:
    """What a rule allows, in words ("> 0", "one of a, b", ...)."""
    parts = [f"{_BOUNDS[k][0]} {rule[k]}" for k in _BOUNDS if k in rule]
    if "choices" in rule:
        parts.append("one of " + ", ".join(sorted(map(str, _choices(rule)))))
    text = " and ".join(parts)
    if "length" in rule:
        text = f"a list of {rule['length']} values" + (f" each {text}" if text else "")
    if rule.get("nonempty"):
        text = "a non-empty string"
    if rule.get("allow"):
        text += " (or " + ", ".join(map(repr, rule["allow"])) + ")"
    return text


def _choices(rule: dict):
    c = rule["choices"]
    return c() if callable(c) else c


def violation(value: Any, rule: dict) -> bool:
    """Does ``value`` break ``rule``?"""
    if value is None or value in rule.get("allow", ()):
        return False
    if "choices" in rule and value not in _choices(rule):
        return True
    if rule.get("nonempty") and not (isinstance(value, str) and value.strip()):
        return True
    items = value if isinstance(value, (list, tuple)) else [value]
    if "length" in rule and len(items) != rule["length"]:
        return True
    for item in items:
        for key, (_, ok) in _BOUNDS.items():
            if key in rule:
                if isinstance(item, bool) or not isinstance(item, (int, float)) or \
                        (isinstance(item, float) and math.isnan(item)) or not ok(item, rule[key]):
                    return True
    return False


def non_finite(value: Any) -> bool:
    """Is ``value``, or an item of it (a list), an infinite or NaN float?"""
    items = value if isinstance(value, (list, tuple)) else [value]
    return any(isinstance(item, float) and not math.isfinite(item) for item in items)


def check_value(key: str, value: Any, rule: dict) -> None:
    """Every field, with a rule or without: a float must be finite (no range makes sense of inf
    or NaN), then ``value`` must keep ``rule``."""
    if non_finite(value):
        what = "finite numbers" if isinstance(value, (list, tuple)) else "a finite number"
        raise ValueError(f"{key} must be {what}{f' ({describe(rule)})' if rule else ''}, got {value!r}")
    if rule and violation(value, rule):
        raise ValueError(f"{key} must be {describe(rule)}, got {value!r}")


def check_fields(cls, values, prefix: str) -> None:
    """Check every field of schema ``cls`` present in ``values`` (an instance or a mapping)."""
    get = values.get if isinstance(values, dict) else (lambda k, d=None: getattr(values, k, d))
    for f in fields(cls):
        check_value(f"{prefix}.{f.name}" if prefix else f.name, get(f.name), f.metadata.get("rule", {}))
