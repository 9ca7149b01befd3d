"""Shared hypothesis settings: small by default (the whole property set in well under a minute),
larger with ``DROPSEMBLES_HYPOTHESIS_EXAMPLES=N`` (examples per property test)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

DEFAULT_EXAMPLES = 100
EXAMPLES = int(os.environ.get("DROPSEMBLES_HYPOTHESIS_EXAMPLES", DEFAULT_EXAMPLES))

PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("DROPSEMBLES_HYPOTHESIS_RANDOM", "") == "",  # CI: the same cases every run
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    database=None,
)


def scaled(fraction: float) -> settings:
    """Settings for a slower property: ``fraction`` of the examples (at least 5)."""
    return settings(PROPERTY, max_examples=max(5, int(EXAMPLES * fraction)))


def assert_one_line(error: BaseException) -> None:
    """A message meant for users: one line, not empty, no traceback text."""
    text = str(error)
    assert text.strip(), f"empty message from {type(error).__name__}"
    assert "\n" not in text, f"multi-line message: {text!r}"
    assert "Traceback" not in text
