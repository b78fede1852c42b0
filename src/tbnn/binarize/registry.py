"""The one registry mechanism of tbnn: name -> object, filled by a decorator, looked up with
an error that lists the valid names. Surrogates, models, data modules, loggers, optimisers,
schedules and callbacks all use it.

It lives in ``binarize/`` so that the library stays self-contained (``binarize/`` imports
nothing from the rest of tbnn); everything else in tbnn builds on ``binarize/`` anyway.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable


class UnknownNameError(KeyError, ValueError):
    """A name that is not one of the valid ones; the message lists them. A KeyError (as a
    mapping lookup) and a ValueError (as a bad value)."""

    def __str__(self) -> str:
        return str(self.args[0])


def check_choice(key: str, value, choices: Iterable) -> Any:
    """Return ``value`` if it is one of ``choices``, else raise naming ``key`` and the choices."""
    choices = list(choices)
    if value not in choices:
        raise UnknownNameError(f"unknown {key} {value!r}; valid names: {', '.join(sorted(map(str, choices)))}")
    return value


class Registry(dict):
    """A dict of named entries. ``@REG.register("name")`` adds one; ``REG["name"]`` looks one
    up, and an unknown name raises UnknownNameError listing the valid names."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str | None = None) -> Callable:
        def deco(obj):
            key = name or obj.__name__
            if key in self:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self[key] = obj
            return obj
        return deco

    def __missing__(self, name):
        check_choice(self.kind, name, self)

    def names(self) -> list[str]:
        return sorted(self)

    def options(self, name: str, given: dict, defaults: dict, group: str | None = None,
                common: tuple = ()) -> dict:
        """The options in ``given`` that the constructor of ``name`` takes. An option it does
        not take must keep its value in ``defaults``: otherwise the user's setting would be
        silently ignored, which is an error naming the option and the accepted ones (those in
        ``common``, the arguments every entry takes, are not listed)."""
        accepted = inspect.signature(self[name]).parameters
        out = {}
        for key, value in given.items():
            if key in accepted:
                out[key] = value
            elif key not in defaults or value != defaults[key]:
                own = sorted(k for k, p in accepted.items() if p.kind is p.POSITIONAL_OR_KEYWORD
                             and p.default is not p.empty and k not in common)
                raise UnknownNameError(f"{group or self.kind}.{key}={value!r} is not an option of "
                                       f"{self.kind} {name!r} (its options: {', '.join(own)})")
        return out
