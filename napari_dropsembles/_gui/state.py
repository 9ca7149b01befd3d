"""The run lifecycle as one small state object that buttons, progress bars and result handling read.

idle -> running -> done | cancelled | failed -> running -> ... ; ``changed`` fires on every
update (from the main thread: workers report through Qt signals, never touch this directly).
"""

from __future__ import annotations

from enum import Enum

from psygnal import Signal

from ..core.progress import Progress

PHASE_WEIGHTS = {"finetune": 0.75, "predict": 0.2, "mesh": 0.05}  # share of one structure's run


class RunState(str, Enum):
    IDLE = "idle"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


def overall_fraction(progress: Progress) -> float:
    """Fraction of a whole run (all structures, all phases) from one Progress."""
    if "overall" in progress.extra:
        return float(progress.extra["overall"])
    done_before = 0.0
    for phase, weight in PHASE_WEIGHTS.items():
        if phase == progress.phase:
            break
        done_before += weight
    within = done_before + PHASE_WEIGHTS.get(progress.phase, 1.0) * progress.fraction
    index, count = progress.extra.get("structure", 0), progress.extra.get("structures", 1)
    return min(1.0, (index + min(within, 1.0)) / max(count, 1))


class RunStatus:
    """State, progress and the loss history of the current (or last) run."""

    changed = Signal()

    def __init__(self) -> None:
        self.state = RunState.IDLE
        self.fraction = 0.0
        self.message = "ready"
        self.losses: list[float] = []
        self.error: BaseException | None = None
        self.steps_seen = 0

    @property
    def running(self) -> bool:
        return self.state is RunState.RUNNING

    def start(self, message: str = "starting") -> None:
        self.state, self.fraction, self.message, self.error = RunState.RUNNING, 0.0, message, None
        self.losses = []
        self.steps_seen = 0
        self.changed.emit()

    def report(self, progress: Progress, fraction: float | None = None) -> None:
        self.steps_seen += 1
        self.fraction = overall_fraction(progress) if fraction is None else fraction
        losses = progress.extra.get("loss_batch")
        if losses:
            self.losses.extend(losses)
        elif progress.loss is not None and progress.phase in ("finetune", "pretrain"):
            self.losses.append(float(progress.loss))
        text = progress.message or progress.phase
        self.message = f"{text}: {progress.phase} {progress.step}/{progress.total}" if progress.message else (
            f"{text} {progress.step}/{progress.total}"
        )
        self.changed.emit()

    def finish(self, state: RunState, message: str, error: BaseException | None = None) -> None:
        self.state, self.message, self.error = state, message, error
        if state is RunState.DONE:
            self.fraction = 1.0
        self.changed.emit()
