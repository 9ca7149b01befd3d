"""Field checks for the frozen config dataclasses: each raises :class:`ConfigError` naming the field.

A config calls these in ``__post_init__`` and stores the normalised value (a numpy integer becomes
an ``int``, a list a ``tuple``), so a config that exists is a valid one. A numeric field states its
default and its range once, with :func:`ranged`; its check (:func:`checked`), the command line's options
and the widgets' spin boxes read them from the field (:func:`field_range`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Range:
    """The values a numeric field accepts: ``[lo, hi]``, an end left out with ``lo_open`` / ``hi_open``."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def closed(self, step: float) -> tuple[float, float]:
        """The span of a spin box: open ends moved in by ``step`` (no upper end: a large number)."""
        lo = 0.0 if self.lo is None else self.lo + (step if self.lo_open else 0.0)
        hi = 1e9 if self.hi is None else self.hi - (step if self.hi_open else 0.0)
        return lo, hi


def ranged(default: object, lo: float | None = None, hi: float | None = None, *, lo_open=False, hi_open=False):
    """A dataclass field with its default and the range its check, the CLI and the widgets read."""
    return dataclasses.field(default=default, metadata={"range": Range(lo, hi, lo_open, hi_open)})


def field_range(config: object, name: str) -> Range:
    """The range of the field ``name`` of a config class or instance."""
    for item in dataclasses.fields(config):
        if item.name == name:
            return item.metadata["range"]
    raise KeyError(f"{type(config).__name__} has no field {name!r}")


def checked(config: object, name: str) -> int | float:
    """The value of a :func:`ranged` field, checked against its range: an integer when its default is one."""
    item = next(f for f in dataclasses.fields(config) if f.name == name)
    bounds = item.metadata["range"]
    value = getattr(config, name)
    if isinstance(item.default, int) and not isinstance(item.default, bool):
        return integer(name, value, bounds.lo, bounds.hi)
    return number(name, value, bounds.lo, bounds.hi, lo_open=bounds.lo_open, hi_open=bounds.hi_open)
