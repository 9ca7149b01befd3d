"""drive runs a progress generator to its end; relay passes its reports on, changed, and returns its value."""

from __future__ import annotations

import contextlib

from napari_dropsembles.core.config.progress import Progress, drive, relay


def _steps(n: int):
    for i in range(1, n + 1):
        yield Progress("work", i, n)
    return "result"


def test_drive_reports_every_step_and_returns_the_value():
    seen = []
    assert drive(_steps(3), seen.append) == "result"
    assert [p.step for p in seen] == [1, 2, 3]
    assert drive(_steps(2)) == "result"


def test_relay_updates_each_report_inside_its_context_and_returns_the_value():
    entered = []

    @contextlib.contextmanager
    def around():
        entered.append("in")
        try:
            yield
        finally:
            entered.append("out")

    def outer():
        value = yield from relay(_steps(2), lambda p: setattr(p, "message", f"tagged {p.step}"), around=around)
        return value.upper()

    seen = []
    assert drive(outer(), seen.append) == "RESULT"
    assert [p.message for p in seen] == ["tagged 1", "tagged 2"]
    assert entered == ["in", "out"] * 3  # two steps and the final StopIteration, each left before the caller runs
