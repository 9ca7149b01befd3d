"""Progress reports, cancellation, and the two ways to run a progress generator.

Every long computation is a generator that yields :class:`Progress` and returns its result.
:func:`drive` runs one to the end (scripts, the CLI, workers); :func:`relay` passes its reports on
from inside another generator, after a change to each (a label, a preview).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Generator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from .errors import Cancelled

T = TypeVar("T")


class CancelFlag(Protocol):
    def is_set(self) -> bool: ...


class CancelToken:
    """A thread-safe cancel flag (``threading.Event`` with a clearer name)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


def check_cancel(cancel: CancelFlag | None) -> None:
    """Raise :class:`Cancelled` when the flag is set (called once per step)."""
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled by the user")


@dataclass
class Progress:
    """One step of a long computation. ``preview`` may carry a coarse result (a Volume)."""

    phase: str  # "pretrain", "fisher", "finetune", "predict", "mesh", ...
    step: int
    total: int
    loss: float | None = None
    member_losses: list[float] | None = None
    message: str = ""
    preview: Any = None
    extra: dict = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 1.0


def drive(steps: Generator[Progress, None, T], on_progress: Callable[[Progress], None] | None = None) -> T:
    """Run a progress generator to its end, telling ``on_progress`` each report; return its value."""
    while True:
        try:
            progress = next(steps)
        except StopIteration as done:
            return done.value
        if on_progress is not None:
            on_progress(progress)


def relay(
    steps: Generator[Progress, None, T],
    update: Callable[[Progress], None] | None = None,
    *,
    around: Callable[[], AbstractContextManager] = contextlib.nullcontext,
) -> Generator[Progress, None, T]:
    """Yield the reports of ``steps`` after ``update(progress)``; return its value.

    Each step of ``steps`` runs inside ``around()`` (e.g. autocast), which is left before the
    report is passed on, so the context never spans the caller's code.
    """
    while True:
        try:
            with around():
                progress = next(steps)
        except StopIteration as done:
            return done.value
        if update is not None:
            update(progress)
        yield progress
