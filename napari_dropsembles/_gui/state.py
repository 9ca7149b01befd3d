"""The run lifecycle as one small state object that buttons, progress bars and result handling read.

idle -> running -> done | cancelled | failed -> running -> ... ; ``changed`` fires on every
update (from the main thread: workers report through Qt signals, never touch this directly).
"""

from __future__ import annotations

import time
from enum import Enum

from psygnal import Signal

from ..core.config.progress import Progress

# share of one structure's run (in order)
PHASE_WEIGHTS = {"finetune": 0.55, "check": 0.2, "predict": 0.2, "mesh": 0.05}


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


def format_duration(seconds: float) -> str:
    """'about 40 s', 'about 3 min', 'about 1 h 20 min'."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"about {max(5, 5 * round(seconds / 5)):.0f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"about {minutes} min"
    return f"about {minutes // 60} h {minutes % 60:02d} min"


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
        self.started_s = 0.0  # perf_counter() at start
        self.blocked = ""  # why a run cannot start now ('' when it can)

    @property
    def running(self) -> bool:
        return self.state is RunState.RUNNING

    def start(self, message: str = "starting") -> None:
        self.state, self.fraction, self.message, self.error = RunState.RUNNING, 0.0, message, None
        self.losses = []
        self.steps_seen = 0
        self.started_s = time.perf_counter()
        self.changed.emit()

    def block(self, reason: str) -> None:
        """Say why Run is unavailable ('' makes it available again)."""
        if reason != self.blocked:
            self.blocked = reason
            self.changed.emit()

    def eta_s(self, now: float | None = None) -> float | None:
        """Seconds left, extrapolated from the time so far (None until there is enough to go on)."""
        if not self.running or self.fraction < 0.01:
            return None
        elapsed = (time.perf_counter() if now is None else now) - self.started_s
        if elapsed < 2.0:
            return None
        return elapsed * (1.0 - self.fraction) / self.fraction

    def progress_text(self, now: float | None = None) -> str:
        """What the progress bar says: the percentage, and the time left on long runs."""
        if self.state in (RunState.IDLE, RunState.CANCELLED, RunState.FAILED):
            return ""
        percent = f"{100 * self.fraction:.0f}%" if self.fraction < 0.995 or not self.running else "99%"
        eta = self.eta_s(now)
        return percent if eta is None else f"{percent} · {format_duration(eta)} left"

    def report(self, progress: Progress, fraction: float | None = None) -> None:
        self.steps_seen += 1
        self.fraction = overall_fraction(progress) if fraction is None else fraction
        losses = progress.extra.get("loss_batch")
        if losses:
            self.losses.extend(losses)
        elif progress.loss is not None and progress.phase in ("finetune", "pretrain"):
            self.losses.append(float(progress.loss))
        text = progress.message or progress.phase
        if progress.extra.get("status"):  # a job that says in its own words what it is doing
            self.message = str(progress.extra["status"])
        elif progress.message:
            self.message = f"{text}: {progress.phase} {progress.step}/{progress.total}"
        else:
            self.message = f"{text} {progress.step}/{progress.total}"
        self.changed.emit()

    def finish(self, state: RunState, message: str, error: BaseException | None = None) -> None:
        self.state, self.message, self.error = state, message, error
        self.fraction = 1.0 if state is RunState.DONE else 0.0  # a stopped run leaves no half-full bar
        self.changed.emit()
