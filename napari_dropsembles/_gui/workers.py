"""Run a core generator (yielding ``Progress``) in a napari thread worker, or synchronously in tests.

The generator never touches Qt. It is wrapped so that it never raises: it returns an
:class:`Outcome` (done with a value, cancelled, or failed with the error), progress reports are
thinned to at most one every ``throttle_s`` (losses in between travel along in
``extra["loss_batch"]``), and the live model is stripped from them before they cross threads.

``DROPSEMBLES_SYNC_WORKERS=1`` (or ``sync=True``) runs the generator in the calling thread:
deterministic tests, the stardist-napari habit.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from ..core.config.errors import Cancelled, ConfigError, DropsemblesError, word_settings
from ..core.config.progress import CancelToken, Progress, drive
from ..core.io.messages import describe_fault
from .state import RunState

SYNC_ENV = "DROPSEMBLES_SYNC_WORKERS"
THROTTLE_S = 0.2  # at most 5 progress repaints a second: each one re-composites the window
logger = logging.getLogger(__name__)


def sync_workers_default() -> bool:
    return os.environ.get(SYNC_ENV, "").strip().lower() not in ("", "0", "false", "no")


@dataclass
class Outcome:
    state: RunState
    value: Any = None
    error: BaseException | None = None

    @property
    def message(self) -> str:
        if self.state is RunState.FAILED and self.error is not None:
            if isinstance(self.error, ConfigError):
                return self.error.worded(GUI_FIELDS.get(self.error.field, f"'{self.error.field}'"))
            if isinstance(self.error, DropsemblesError):
                return self.error.in_words(gui_word)
            return word_settings(describe_fault(self.error), gui_word)
        return self.state.value


GUI_FIELDS = {  # config field -> the widget field that sets it
    "members": "'Members'",
    "finetune.steps": "'Fine-tuning steps'",
    "finetune.ewc_lambda": "'EWC strength'",
    "resolution_mm": "'Output spacing'",
    "threshold": "the threshold",
    "seed": "'Seed'",
    "device": "'Device'",
    "method": "'Method'",
    "empty_slices": "'Empty slices' (Advanced options)",
    "steps": "'Steps'",
    "samples": "'Training samples'",
    "batch_size": "'Batch size'",
    "dropout": "'Dropout'",
    "label": "'Label'",
    "input_threshold": "'Threshold image'",
    "members_out": "'Per-member meshes' (Advanced options)",
    "memory_limit": "the memory limit (environment variable DROPSEMBLES_MEMORY_LIMIT_GB)",
    "max_voxels": "the output size limit (environment variable DROPSEMBLES_MAX_VOXELS)",
    "lr": "'Learning rate'",
    "hidden": "'Decoder width'",
    "grid_size": "'Encoder grid'",
}


def gui_word(field: str, value: str | None) -> str:
    """A setting named in a core message, as the widget field that sets it (``'Label' = 3``)."""
    name = GUI_FIELDS.get(field, f"'{field.replace('_', ' ')}'")
    return name if value is None else f"{name} = {value}"


def guarded_steps(
    factory: Callable[[CancelToken], Generator[Progress, None, Any]],
    cancel: CancelToken,
    task: Task,
    throttle_s: float,
) -> Generator[Progress, None, Outcome]:
    """Run ``factory(cancel)`` to its end; yield thinned Progress; return an Outcome, never raise."""
    last_sent, last_phase, last_status, losses = 0.0, None, None, []
    try:
        steps = factory(cancel)
        while True:
            try:
                progress = next(steps)
            except StopIteration as done:
                value = done.value
                break
            if cancel.is_set():
                task.steps_after_cancel += 1
            progress.extra.pop("live", None)  # the model being trained stays in this thread
            if progress.loss is not None and progress.phase in ("finetune", "pretrain"):
                losses.append(float(progress.loss))
            now = time.perf_counter()
            final = progress.step >= progress.total
            status = progress.extra.get("status")  # a job saying in words what it does now: never dropped
            new = progress.phase != last_phase or (status is not None and status != last_status)
            if progress.preview is not None or new or final or now - last_sent >= throttle_s:
                progress.extra["loss_batch"], losses = losses, []
                last_sent, last_phase, last_status = now, progress.phase, status
                yield progress
    except Cancelled:
        return Outcome(RunState.CANCELLED)
    except DropsemblesError as error:
        return Outcome(RunState.FAILED, error=error)
    except Exception as error:  # a bug or a resource problem: report it, keep the GUI alive
        logger.exception("dropsembles worker failed")
        return Outcome(RunState.FAILED, error=error)
    if cancel.is_set():
        return Outcome(RunState.CANCELLED)
    return Outcome(RunState.DONE, value)


class Task:
    """One background computation: start, cancel (takes effect at the next step), detach callbacks."""

    def __init__(
        self,
        factory: Callable[[CancelToken], Generator[Progress, None, Any]],
        *,
        on_progress: Callable[[Progress], None],
        on_finished: Callable[[Outcome], None],
        sync: bool | None = None,
        throttle_s: float = THROTTLE_S,
    ) -> None:
        self.factory = factory
        self.cancel_token = CancelToken()
        self.sync = sync_workers_default() if sync is None else bool(sync)
        self.throttle_s = throttle_s
        self.steps_after_cancel = 0
        self.running = False
        self.outcome: Outcome | None = None
        self.worker = None
        self._on_progress = on_progress
        self._on_finished = on_finished

    def start(self) -> Task:
        self.running = True
        steps = guarded_steps(self.factory, self.cancel_token, self, self.throttle_s)
        if self.sync:
            self._finish(drive(steps, self._progress))
            self.running = False
            return self
        from napari.qt.threading import create_worker

        def dropsembles_task():
            return (yield from steps)

        worker = create_worker(dropsembles_task, _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(self._progress)
        worker.returned.connect(self._finish)
        worker.aborted.connect(lambda: self._finish(Outcome(RunState.CANCELLED)))
        worker.errored.connect(lambda error: self._finish(Outcome(RunState.FAILED, error=error)))
        worker.finished.connect(self._thread_done)
        worker._dropsembles_task = self  # keep this object alive as long as the worker
        self.worker = worker
        worker.start()
        return self

    def cancel(self) -> None:
        self.cancel_token.set()

    def detach(self) -> None:
        """Stop calling back (the widget is going away); the worker ends at its next step."""
        self.cancel_token.set()
        self._on_progress = _ignore
        self._on_finished = _ignore

    def _progress(self, progress: Progress) -> None:
        self._on_progress(progress)

    def _finish(self, outcome: Outcome) -> None:
        if self.outcome is not None:  # aborted and errored may both arrive
            return
        self.outcome = outcome
        self._on_finished(outcome)

    def _thread_done(self) -> None:
        self.running = False


def _ignore(*_args) -> None:
    return None
