"""Whatever the user does to the layers while a run goes on, napari keeps running, no layer is lost, and
no result appears under another layer's name (issue 23, item 1). A shown window, a background worker.

The run is held at a gate after its first report (after its first live preview, with the preview on),
the test acts on the layers there, then lets the run go on: the order of events is the same every time.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_dropsembles._gui.layers import result_layers, role_of

from . import gui_support
from .conftest import sphere_volume
from .gui_support import add_volume, requires_gui, tiny_settings

tiny_prior_path = gui_support.tiny_prior_path
pytestmark = [requires_gui, pytest.mark.gui]
PREVIEW = pytest.mark.parametrize("preview", [True, False], ids=["preview", "no-preview"])
# without the preview the same paths run minus the preview layer: in the slow set, the preview ones by default
PREVIEW_FIRST = pytest.mark.parametrize(
    "preview", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["preview", "no-preview"]
)


@pytest.fixture
def shown(make_napari_viewer, monkeypatch):
    """A shown viewer (real drawing under Xvfb) and background workers."""
    gui_support.register_plugin()
    monkeypatch.delenv("DROPSEMBLES_SYNC_WORKERS", raising=False)
    return make_napari_viewer(show=True)


class Gate:
    """Holds a run after its first report (its first preview, with previews on) until ``open``."""

    def __init__(self, monkeypatch, preview: bool) -> None:
        from napari_dropsembles._gui import reconstruct, run_settings

        monkeypatch.setattr(run_settings, "PREVIEW_INTERVAL_S", 0.01 if preview else 0.0)
        self.reached = threading.Event()
        self._open = threading.Event()
        original = reconstruct.reconstruct_task

        def gated(request, cancel):
            steps = original(request, cancel)
            try:
                while True:
                    progress = next(steps)
                    yield progress
                    if not self.reached.is_set() and (progress.preview is not None or not preview):
                        self.reached.set()
                        self._open.wait(30)
            except StopIteration as done:
                return done.value

        monkeypatch.setattr(reconstruct, "reconstruct_task", gated)

    def open(self) -> None:
        self._open.set()


def start(viewer, qtbot, prior, monkeypatch, *, preview: bool, steps: int = 8):
    """Two Labels layers, the widget on the first, a run held at the gate; returns (widget, input, other, gate)."""
    sphere = add_volume(viewer, sphere_volume(), "sphere")
    other = add_volume(viewer, sphere_volume(radius_mm=6), "other")
    widget = gui_support.open_widget(viewer)
    tiny_settings(widget, prior, steps=steps)
    widget.live_preview.value = preview
    widget.input.value = sphere
    gate = Gate(monkeypatch, preview)
    task = widget.run()
    qtbot.waitUntil(gate.reached.is_set, timeout=60_000)
    qtbot.wait(50)  # the report (and its preview) reach the main thread
    return widget, sphere, other, gate, task


def still_draws(viewer, qtbot) -> None:
    """napari survives what used to crash it: a canvas redraw after a resize, a new layer, 3D and back."""
    window = viewer.window._qt_window
    window.resize(window.width() - 40, window.height() - 30)
    viewer.add_labels(np.zeros((4, 4, 4), np.uint8), name="added after")
    qtbot.wait(100)
    viewer.dims.ndisplay = 3
    qtbot.wait(100)
    viewer.dims.ndisplay = 2
    qtbot.wait(100)
    assert viewer.screenshot(canvas_only=True, flash=False).size


@PREVIEW
def test_closing_the_input_during_a_run_cancels_it_and_adds_no_layer(
    shown, qtbot, tiny_prior_path, monkeypatch, preview
):
    from napari_dropsembles._gui.state import RunState

    viewer = shown
    widget, sphere, other, gate, task = start(viewer, qtbot, tiny_prior_path, monkeypatch, preview=preview)
    source = widget.session.run_frame.source_id
    viewer.layers.remove(sphere)
    gate.open()
    qtbot.waitUntil(lambda: not widget.status.running, timeout=60_000)
    assert widget.status.state is RunState.CANCELLED and "'sphere' was closed" in widget.status.message
    qtbot.wait(200)
    assert not result_layers(viewer.layers, source)  # no result, no preview left behind
    assert [layer.name for layer in viewer.layers] == ["other"]
    assert widget.input.value is other and widget.current is None  # nothing shown under the other's name
    assert "no result" in widget.result_info.text()
    still_draws(viewer, qtbot)


@PREVIEW_FIRST
def test_renaming_the_input_during_a_run_names_the_result_after_the_new_name(
    shown, qtbot, tiny_prior_path, monkeypatch, preview
):
    viewer = shown
    widget, sphere, other, gate, task = start(viewer, qtbot, tiny_prior_path, monkeypatch, preview=preview)
    sphere.name = "L1 drawn"
    gate.open()
    qtbot.waitUntil(lambda: not widget.status.running, timeout=60_000)
    assert widget.status.state.value == "done", widget.status.message
    names = sorted(layer.name for layer in viewer.layers if role_of(layer))
    assert names and all(name.startswith("L1 drawn ") for name in names), names
    assert widget.current is not None and widget.current.frame.name == "L1 drawn"
    sphere.name = "L1"  # renamed afterwards: its result layers follow
    assert all(layer.name.startswith("L1 ") for layer in viewer.layers if role_of(layer))
    still_draws(viewer, qtbot)


@PREVIEW_FIRST
def test_painting_the_input_during_a_run_says_the_result_leaves_it_out(
    shown, qtbot, tiny_prior_path, monkeypatch, preview
):
    viewer = shown
    widget, sphere, other, gate, task = start(viewer, qtbot, tiny_prior_path, monkeypatch, preview=preview)
    data = np.array(sphere.data)
    data[:, :, 0] = 1
    sphere.data = data
    gate.open()
    qtbot.waitUntil(lambda: not widget.status.running, timeout=60_000)
    assert widget.status.state.value == "done"
    assert "painted during the run" in widget.result_info.text() and "Run" in widget.result_info.text()


@PREVIEW_FIRST
def test_closing_other_layers_during_a_run_keeps_the_run_and_the_viewer(
    shown, qtbot, tiny_prior_path, monkeypatch, preview
):
    viewer = shown
    widget, sphere, other, gate, task = start(viewer, qtbot, tiny_prior_path, monkeypatch, preview=preview)
    viewer.layers.remove(other)
    gate.open()
    qtbot.waitUntil(lambda: not widget.status.running, timeout=60_000)
    assert widget.status.state.value == "done", widget.status.message
    assert {"mean", "variance", "thresholded", "mesh"} <= {role_of(layer) for layer in viewer.layers}
    assert sphere in viewer.layers and widget.current.frame.name == "sphere"
    still_draws(viewer, qtbot)


@PREVIEW_FIRST
def test_closing_the_previous_result_during_a_rerun_adds_it_again(shown, qtbot, tiny_prior_path, monkeypatch, preview):
    viewer = shown
    widget, sphere, other, gate, task = start(viewer, qtbot, tiny_prior_path, monkeypatch, preview=preview)
    gate.open()
    qtbot.waitUntil(lambda: not widget.status.running, timeout=60_000)
    gate = Gate(monkeypatch, preview)  # a re-run, held again; its preview shows in the previous mean
    widget.run()
    qtbot.waitUntil(gate.reached.is_set, timeout=60_000)
    qtbot.wait(50)
    for layer in [layer for layer in viewer.layers if role_of(layer) in ("mean", "variance")]:
        viewer.layers.remove(layer)
    gate.open()
    qtbot.waitUntil(lambda: not widget.status.running, timeout=60_000)
    assert widget.status.state.value == "done", widget.status.message
    roles = [role_of(layer) for layer in viewer.layers if role_of(layer)]
    assert sorted(roles) == sorted(["mean", "variance", "thresholded", "mesh"]), roles  # each once
    still_draws(viewer, qtbot)


def test_moving_the_input_during_a_run_says_the_result_is_in_the_old_place(shown, qtbot, tiny_prior_path, monkeypatch):
    viewer = shown
    widget, sphere, other, gate, task = start(viewer, qtbot, tiny_prior_path, monkeypatch, preview=True)
    sphere.translate = (5.0, 0.0, 0.0)
    gate.open()
    qtbot.waitUntil(lambda: not widget.status.running, timeout=60_000)
    assert "moved during the run" in widget.result_info.text()


def test_a_lower_labels_layer_closed_then_a_layer_added_does_not_crash_napari(shown, qtbot):
    """napari 0.9 deletes a closed layer's GL objects with another GL context current; the next resize
    used to segfault in glDrawArrays (Xvfb, Mesa). The dock makes the canvas current first."""
    viewer = shown
    lower = add_volume(viewer, sphere_volume(), "lower")
    add_volume(viewer, sphere_volume(radius_mm=6), "upper")
    gui_support.open_widget(viewer)
    qtbot.wait(100)
    viewer.layers.remove(lower)
    qtbot.wait(100)
    still_draws(viewer, qtbot)
