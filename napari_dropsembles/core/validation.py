"""Field checks for the frozen config dataclasses: each raises :class:`ConfigError` naming the field.

A config calls these in ``__post_init__`` and stores the normalised value (a numpy integer becomes
an ``int``, a list a ``tuple``), so a config that exists is a valid one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from numbers import Integral, Real

from .errors import ConfigError

SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed and numpy take seeds up to here


def integer(field: str, value: object, lo: int, hi: int | None = None) -> int:
    """A true integer (not a bool, float or string) in ``[lo, hi]``."""
    ok = isinstance(value, Integral) and not isinstance(value, bool)
    if not ok or value < lo or (hi is not None and value > hi):
        span = f"from {lo} to {hi}" if hi is not None else f"of at least {lo}"
        raise ConfigError(field, f"must be an integer {span}", value)
    return int(value)


def _interval(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi:g}"
    return "finite"


def number(
    field: str,
    value: object,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """A finite real number (not a bool or string) in the interval; open ends with ``lo_open``/``hi_open``."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        raise ConfigError(field, f"must be a finite number {_interval(lo, hi, lo_open, hi_open)}", value)
    return float(value)


def flag(field: str, value: object) -> bool:
    """True or False (numpy bools too)."""
    if not isinstance(value, bool) and type(value).__name__ != "bool_":
        raise ConfigError(field, "must be true or false", value)
    return bool(value)


def one_of(field: str, value: object, choices: Iterable[str]) -> str:
    """One of the given strings."""
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(field, f"must be one of {', '.join(choices)}", value)
    return value


def seed(field: str, value: object) -> int:
    """A random seed: an integer in [0, 2**63 - 1]."""
    return integer(field, value, 0, SEED_MAX)


def set_fields(config: object, **values: object) -> None:
    """Store normalised values on a frozen dataclass (from its ``__post_init__``)."""
    for name, value in values.items():
        object.__setattr__(config, name, value)
