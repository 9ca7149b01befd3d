"""One run controller per widget: the run's state, its worker and its activity bar, in one object.

The Run and Cancel buttons, the progress bar and the result handling all read the controller's
:class:`~.state.RunStatus` (idle, running, done, cancelled, failed). The widget gives it a
generator factory and what to do with each ending; the controller starts the
:class:`~.workers.Task`, reports progress, closes the activity bar, stops the worker when the
widget goes away and ignores a Cancel that arrives within a double-click of the Run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

from ..core.config.progress import Progress
from .state import RunState, RunStatus
from .workers import Outcome, Task

DOUBLE_CLICK_S = 0.4  # a Cancel this soon after Run is the second click of a double-click


class RunController:
    """Start, report, cancel and end one background job at a time for one widget."""

    def __init__(self, title: str, *, activity: bool = True) -> None:
        self.title = title
        self.status = RunStatus()
        self.task: Task | None = None
        self.sync: bool | None = None  # None: DROPSEMBLES_SYNC_WORKERS decides
        self._use_activity = activity
        self._activity = None
        self._started_s = 0.0
        self._on_progress: Callable[[Progress], None] | None = None
        self._on_finished: Callable[[Outcome], None] | None = None

    @property
    def running(self) -> bool:
        return self.status.running

    def start(
        self,
        factory,
        *,
        message: str,
        on_finished: Callable[[Outcome], None] | None,
        on_progress: Callable[[Progress], None] | None = None,
        activity_name: str | None = None,
    ) -> Task:
        """Run ``factory(cancel)`` in the background (or at once when synchronous); returns its task."""
        if self.running and self.task is not None:
            return self.task
        self.status.start(message)
        self._started_s = time.perf_counter()
        self._on_progress, self._on_finished = on_progress, on_finished
        if self._use_activity:
            from .common import ActivityProgress

            self._activity = ActivityProgress(f"{self.title}: {activity_name or message}")
        self.task = Task(factory, on_progress=self._progress, on_finished=self._finished, sync=self.sync)
        self.task.start()
        return self.task

    def cancel(self, *, force: bool = False) -> bool:
        """Ask the job to stop at its next step; False when ignored (nothing running, or, unless ``force``,
        the second click of a double-click on Run)."""
        if not self.running or self.task is None:
            return False
        if not force and time.perf_counter() - self._started_s < DOUBLE_CLICK_S:
            return False
        self.task.cancel()
        self.status.message = "cancelling…"
        self.status.changed.emit()
        return True

    def finish(self, state: RunState, message: str, error: BaseException | None = None) -> None:
        self.status.finish(state, message, error)

    def shutdown(self, *_args) -> None:
        """The widget is going away: stop calling back, let the worker end at its next step."""
        if self.task is not None:
            self.task.detach()
        self._close_activity()

    def _progress(self, progress: Progress) -> None:
        if not self.running:
            return
        self.status.report(progress)
        if self._activity is not None:
            self._activity.update(self.status.fraction, progress.phase)
        if self._on_progress is not None and self.running:
            self._on_progress(progress)

    def _finished(self, outcome: Outcome) -> None:
        self._close_activity()
        callback, self._on_progress = self._on_finished, None
        if callback is not None:
            callback(outcome)  # ends the status, now or (result layers placed over a few turns) later
        else:
            self.status.finish(outcome.state, outcome.message, outcome.error)

    def _close_activity(self) -> None:
        activity, self._activity = self._activity, None
        if activity is not None:
            activity.close()


def shutdown_on_destroy(widget, controller: RunController) -> None:
    """Stop ``controller``'s worker when ``widget`` is destroyed (holds no reference to the widget)."""
    widget.destroyed.connect(partial(_shutdown, controller))


def _shutdown(controller: RunController, *_args) -> None:
    controller.shutdown()


class RunnerBacked:
    """For a widget that holds a :class:`RunController` as ``runner``: its run status, and whether its
    workers run synchronously (tests), read from the controller."""

    runner: RunController

    @property
    def status(self) -> RunStatus:
        return self.runner.status

    @property
    def sync(self) -> bool | None:
        return self.runner.sync

    @sync.setter
    def sync(self, value: bool | None) -> None:
        self.runner.sync = value
