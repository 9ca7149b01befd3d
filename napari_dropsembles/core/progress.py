"""Progress reports and cancellation shared by every long computation."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import Cancelled


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
