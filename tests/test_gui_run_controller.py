"""The run controller (issue 9 item 5): one object that Run, Cancel, the progress bar and the results read.

No display needed: the controller and its tasks run synchronously here.
"""

from __future__ import annotations

import time

from napari_dropsembles._gui.run import DOUBLE_CLICK_S, RunController
from napari_dropsembles._gui.state import RunState
from napari_dropsembles.core.config.progress import Progress, check_cancel


def counting(steps: int, seen: list):
    def factory(cancel):
        for step in range(1, steps + 1):
            check_cancel(cancel)
            yield Progress("finetune", step, steps, loss=1.0 / step)
            seen.append(step)
        return "result"

    return factory


def test_a_run_reports_progress_and_its_ending_through_one_status():
    controller = RunController("test", activity=False)
    controller.sync = True
    states, ends = [], []
    controller.status.changed.connect(lambda: states.append(controller.status.state))

    def done(outcome):
        ends.append(outcome)
        controller.finish(RunState.DONE, f"got {outcome.value}")

    controller.start(counting(4, []), message="working", on_finished=done)
    assert ends[0].state is RunState.DONE and ends[0].value == "result"
    assert controller.status.state is RunState.DONE and controller.status.message == "got result"
    assert controller.status.losses and controller.status.fraction == 1.0
    assert states[0] is RunState.RUNNING and states[-1] is RunState.DONE


def test_cancel_within_a_double_click_of_run_is_ignored_then_stops_the_run():
    controller = RunController("test", activity=False)
    controller.sync = False
    controller.status.start("working")  # as if started a moment ago
    controller._started_s = time.perf_counter()

    class FakeTask:
        cancelled = False

        def cancel(self):
            self.cancelled = True

    controller.task = FakeTask()
    assert not controller.cancel() and not controller.task.cancelled  # the second click of a double-click
    controller._started_s -= DOUBLE_CLICK_S + 0.01
    assert controller.cancel() and controller.task.cancelled and controller.status.message == "cancelling…"


def test_an_ending_without_a_handler_ends_the_status_and_shutdown_detaches():
    controller = RunController("test", activity=False)
    controller.sync = True
    seen = []
    controller.start(counting(3, seen), message="working", on_finished=None)
    assert controller.status.state is RunState.DONE and seen == [1, 2, 3]
    controller.shutdown()
    assert controller.task.cancel_token.is_set()
