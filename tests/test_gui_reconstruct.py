"""The Reconstruct widget in a real napari viewer (headless under Xvfb): runs, layers, slider, cancel, errors."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dropsembles.core.volumes.volume import Volume

from . import gui_support
from .conftest import sphere_volume
from .gui_support import add_volume, errors, requires_gui, tiny_settings, two_spheres

viewer = gui_support.viewer  # fixtures
notifications = gui_support.notifications
tiny_prior_path = gui_support.tiny_prior_path
sync_workers = gui_support.sync_workers
open_widget = gui_support.open_widget

pytestmark = [requires_gui, pytest.mark.gui]

PLUGIN, WIDGET = "napari-dropsembles", "Reconstruct with uncertainty"


def results_by_role(viewer) -> dict:
    from napari_dropsembles._gui.layers import role_of

    return {role_of(layer): layer for layer in viewer.layers if role_of(layer)}


def world_box(layer) -> tuple[np.ndarray, np.ndarray]:
    extent = np.asarray(layer.extent.world)
    return extent[0], extent[1]


def test_running_on_the_sample_adds_layers_aligned_with_the_input(viewer, tiny_prior_path, sync_workers):
    from napari_dropsembles._gui.state import RunState

    viewer.open_sample(PLUGIN, "vertebra")
    observation = viewer.layers["vertebra observation"]
    widget = open_widget(viewer)
    tiny_settings(widget, tiny_prior_path)
    widget.input.value = observation
    widget.run()

    assert widget.status.state is RunState.DONE, widget.status.message
    assert widget.run_panel.button.text() == "Run" and widget.run_panel.progress_bar.value() == 1000
    layers = results_by_role(viewer)
    assert set(layers) == {"mean", "thresholded", "variance", "mesh"}
    assert layers["mean"].rendering == "iso" and layers["variance"].colormap.name.startswith("inferno")
    assert not layers["mean"].visible  # the mean only when asked
    heat = layers["variance"].colormap.colors
    assert layers["variance"].blending == "translucent" and heat[0, 3] == 0 and heat[-1, 3] > 0.5  # fades in
    # the mesh has the input's own scale and translate; the grids lie on the input in world mm
    mesh = layers["mesh"]
    assert np.allclose(mesh.scale, observation.scale) and np.allclose(mesh.translate, observation.translate)
    in_lo, in_hi = world_box(observation)
    for role in ("mean", "variance", "thresholded"):
        lo, hi = world_box(layers[role])
        assert np.all((lo + hi) / 2 > in_lo) and np.all((lo + hi) / 2 < in_hi), role
        assert np.all(hi - lo < 1.6 * (in_hi - in_lo) + 10), role
    grid = widget.current.structures.mean
    assert np.allclose(layers["mean"].data_to_world((1, 2, 3)), grid.index_to_world(np.array([[1, 2, 3]]))[0])
    # the mesh colours share the heatmap's contrast limits, and follow them
    assert tuple(mesh.contrast_limits) == tuple(layers["variance"].contrast_limits)
    layers["variance"].contrast_limits = (0.0, 1e-3)
    assert tuple(mesh.contrast_limits) == (0.0, 1e-3)
    assert [row.label for row in widget.table.rows] == [1]


def test_rerun_replaces_the_results_of_the_same_input(viewer, tiny_prior_path, sync_workers):
    sphere = add_volume(viewer, sphere_volume(), "sphere")
    other = add_volume(viewer, sphere_volume(radius_mm=8, centre_mm=(40.0, 0.0, 0.0)), "other")
    widget = open_widget(viewer)
    tiny_settings(widget, tiny_prior_path)
    widget.input.value = sphere
    widget.run()
    first = results_by_role(viewer)
    first_mean = first["mean"].data.copy()
    widget.seed.value = 3
    widget.run()
    assert len(viewer.layers) == 2 + 4
    second = results_by_role(viewer)
    assert all(second[role] is first[role] for role in first)  # updated in place, not piled up
    assert not np.array_equal(second["mean"].data, first_mean)
    widget.input.value = other
    widget.run()
    assert len(viewer.layers) == 2 + 4 + 4  # another input: its own results


def test_threshold_and_member_sliders_remesh_cached_grids_without_the_network(
    viewer, tiny_prior_path, sync_workers, qtbot, monkeypatch
):
    from napari_dropsembles.core.fitting.fitted import Fitted

    sphere = add_volume(viewer, sphere_volume(), "sphere")
    widget = open_widget(viewer)
    tiny_settings(widget, tiny_prior_path, members=3, spacing_mm=2.0)
    widget.member_meshes.value = True
    widget.input.value = sphere
    widget.run()
    layers = results_by_role(viewer)
    before = layers["mesh"].data[0].copy()

    def no_network(*_args, **_kwargs):
        raise AssertionError("the sliders must not query the network")

    monkeypatch.setattr(Fitted, "predict_normalised", no_network)
    mean = widget.current.structures.mean.data
    level = round(float(mean.min() + mean.max()) / 2, 2)
    widget.threshold.setValue(level)
    qtbot.waitUntil(
        lambda: (
            widget.last_remesh is not None
            and widget.last_remesh.step_size == 1
            and abs(widget.last_remesh.threshold - level) < 1e-6
        ),
        timeout=5000,
    )
    after = layers["mesh"].data[0]
    assert after.shape != before.shape or not np.allclose(after, before)
    assert len(after) > 3  # a real surface at this level
    assert layers["mean"].iso_threshold == pytest.approx(level)
    assert np.array_equal(layers["thresholded"].data > 0, mean >= level)
    # one slider over the members: the member mesh layer shows the chosen member
    members = layers["members"]
    first = members.data[0].copy()
    assert widget.member.isEnabled() and widget.member.maximum() == 2
    widget.member.setValue(2)
    qtbot.waitUntil(
        lambda: members.data[0].shape != first.shape or not np.allclose(members.data[0], first), timeout=5000
    )


def test_mesh_follows_a_dragged_slider_on_a_128_cubed_grid(viewer, sync_workers, qtbot):
    """Coarse meshes while the slider moves, the full-resolution mesh once it rests."""
    from napari_dropsembles._gui.layers import InputFrame, reconstruction_to_layer_data
    from napari_dropsembles._gui.tasks import ReconstructOutput
    from napari_dropsembles.core.results.structures import combine_structures

    from .test_napari_structures import fake_result

    result = fake_result((0.0, 0.0, 0.0), 20.0, spacing=0.41, spread=2.0)
    assert min(result.maps.mean.shape) >= 126
    layer = add_volume(viewer, Volume(np.asarray(result.observation.data), result.observation.affine), "ball")
    widget = open_widget(viewer)
    structures = combine_structures({1: result})
    frame = InputFrame.from_layer(layer)
    output = ReconstructOutput(
        structures, reconstruction_to_layer_data(structures, frame), structures.table(), frame, 0.5, 0.0
    )
    widget._show_result(output)
    mesh = results_by_role(viewer)["mesh"]
    seen = []
    mesh.events.data.connect(lambda _event: seen.append((widget.last_remesh.step_size, len(mesh.data[1]))))
    for value in np.linspace(0.5, 0.3, 6):
        widget.threshold.setValue(float(value))
        qtbot.wait(60)  # a drag: new values every 60 ms
    qtbot.waitUntil(
        lambda: (
            widget.last_remesh is not None and widget.last_remesh.step_size == 1 and widget.last_remesh.threshold < 0.31
        ),
        timeout=5000,
    )
    assert any(step == 2 for step, _n in seen), seen  # followed the drag with coarse meshes
    assert seen[-1][0] == 1
    full = structures.remesh(widget.last_remesh.threshold)
    assert len(mesh.data[1]) == len(full.faces)


def test_cancel_stops_a_background_run_within_one_step_and_leaves_no_layer(viewer, tiny_prior_path, qtbot, monkeypatch):
    from napari_dropsembles._gui import run_settings
    from napari_dropsembles._gui.state import RunState

    monkeypatch.delenv("DROPSEMBLES_SYNC_WORKERS", raising=False)
    monkeypatch.setattr(run_settings, "PREVIEW_INTERVAL_S", 0.01)  # a live preview layer appears at once
    sphere = add_volume(viewer, sphere_volume(), "sphere")
    widget = open_widget(viewer)
    tiny_settings(widget, tiny_prior_path, steps=5000)
    widget.live_preview.value = True
    widget.input.value = sphere
    task = widget.run()
    panel = widget.run_panel
    assert not task.sync and not panel.button.isEnabled() and panel.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: widget._preview_layer is not None and widget.status.steps_seen >= 3, timeout=20000)
    assert widget.status.losses  # the live loss curve has points
    qtbot.wait(500)  # past the double-click guard
    panel.cancel_button.click()
    qtbot.waitUntil(lambda: not task.running, timeout=20000)
    assert widget.status.state is RunState.CANCELLED
    assert task.steps_after_cancel <= 1
    assert list(viewer.layers) == [sphere]  # the preview went too; nothing half-made remains
    assert panel.button.isEnabled() and not panel.cancel_button.isEnabled()
    assert panel.loss_curve.losses == widget.status.losses and panel.loss_curve.losses  # the curve stays


def test_closing_the_viewer_stops_the_worker(viewer, tiny_prior_path, qtbot, monkeypatch):
    monkeypatch.delenv("DROPSEMBLES_SYNC_WORKERS", raising=False)
    sphere = add_volume(viewer, sphere_volume(), "sphere")
    widget = open_widget(viewer)
    tiny_settings(widget, tiny_prior_path, steps=5000)
    widget.input.value = sphere
    task = widget.run()
    qtbot.waitUntil(lambda: widget.status.steps_seen >= 2, timeout=20000)
    viewer.close()
    qtbot.waitUntil(lambda: not task.running, timeout=20000)
    assert task.cancel_token.is_set() or task.worker.abort_requested


BAD_INPUTS = {
    "2D data": (lambda: np.ones((20, 20), np.uint8), "labels", "2D data"),
    "4D data": (lambda: np.ones((2, 8, 8, 8), np.float32), "image", "4D data"),
    "empty mask": (lambda: np.zeros((12, 12, 12), np.uint8), "labels", "empty"),
    "full mask": (lambda: np.ones((12, 12, 12), np.uint8), "labels", "whole volume"),
    "NaN": (lambda: np.where(np.eye(12, dtype=bool)[:, :, None], np.nan, 1.0) * np.ones((1, 1, 12)), "image", "NaN"),
}


def test_bad_inputs_and_a_failing_worker_show_an_error_and_change_no_layer(
    viewer, tiny_prior_path, sync_workers, notifications, tmp_path, monkeypatch
):
    from napari_dropsembles._gui import run_settings, tasks
    from napari_dropsembles._gui.state import RunState
    from napari_dropsembles.core.config.progress import Progress

    widget = open_widget(viewer)
    tiny_settings(widget, tiny_prior_path)
    good = add_volume(viewer, sphere_volume(), "good")
    cases = []
    for name, (make, kind, expected) in BAD_INPUTS.items():
        layer = getattr(viewer, f"add_{kind}")(make(), name=name)
        cases.append((layer, expected, None))
    # an intensity image with 'Threshold image' unticked
    continuous = viewer.add_image(np.random.default_rng(0).random((12, 12, 12)), name="continuous image")
    cases.append((continuous, "Threshold image", lambda: setattr(widget.use_image_threshold, "value", False)))
    # a multi-label layer whose second label was painted after it was chosen as a binary mask
    multi = add_volume(viewer, sphere_volume(), "multi")
    cases.append((multi, "choose one in 'Label'", lambda: _paint_second_label(multi)))
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    cases.append((good, "corrupt.safetensors", lambda: widget.add_prior(corrupt)))

    jobs = tasks.reconstruct_api
    working = jobs.reconstruct_job_steps

    def broken(job, cancel=None):  # fails after showing a live preview
        volume = job.observation
        yield Progress("finetune", 1, 10, loss=0.7, preview=volume.with_data(np.asarray(volume.data, np.float32)))
        raise RuntimeError("CUDA error: device-side assert triggered")

    def break_the_worker():
        widget.prior.value = str(tiny_prior_path.resolve())
        monkeypatch.setattr(jobs, "reconstruct_job_steps", broken)
        monkeypatch.setattr(run_settings, "PREVIEW_INTERVAL_S", 0.01)
        widget.live_preview.value = True

    cases.append((good, "RuntimeError: CUDA error", break_the_worker))

    for layer, expected, prepare in cases:
        widget.input.value = layer
        if prepare is not None:
            prepare()
        snapshot = [(each, np.array(each.data, copy=True)) for each in viewer.layers]
        notifications.clear()
        widget.run()
        messages = errors(notifications)
        assert messages and expected in messages[-1], (layer.name, messages)
        assert widget.status.state is RunState.FAILED and widget.run_panel.button.text() == "Run"
        assert not widget.run_panel.cancel_button.isEnabled()
        assert [each for each, _ in snapshot] == list(viewer.layers), layer.name
        assert all(np.array_equal(each.data, data, equal_nan=True) for each, data in snapshot), layer.name

    # the widget is usable again: the continuous image with a threshold ticked reconstructs
    monkeypatch.setattr(jobs, "reconstruct_job_steps", working)
    widget.live_preview.value = False
    widget.input.value = viewer.layers["continuous image"]
    assert not widget.use_image_threshold.native.isHidden()  # offered for images
    widget.use_image_threshold.value = True
    widget.image_threshold.value = 0.5
    widget.run()
    assert widget.status.state is RunState.DONE, widget.status.message


def _paint_second_label(layer):
    layer.data[:3, :3, :3] = 2  # in place, as a brush paints (no data event: the Label choice is stale)


def test_structure_table_rows_match_the_labels_and_centre_the_view(viewer, tiny_prior_path, sync_workers):
    from napari_dropsembles._gui.tasks import EACH_LABEL

    spine = add_volume(viewer, two_spheres(labels=(2, 5)), "spine")
    widget = open_widget(viewer)
    tiny_settings(widget, tiny_prior_path)
    widget.input.value = spine
    assert EACH_LABEL in [value for value in widget.label.choices]
    widget.label.value = EACH_LABEL
    widget.run()
    rows = widget.table.rows
    assert [row.label for row in rows] == [2, 5]
    assert widget.table.rowCount() == 2 and widget.table.item(1, 0).text() == "label 5"
    assert set(np.unique(results_by_role(viewer)["thresholded"].data)) <= {0, 2, 5}
    widget.table.cellClicked.emit(1, 0)
    centre = np.asarray(rows[1].centre_mm)
    assert np.linalg.norm(centre - np.array([14.0, 0.0, 0.0])) < 10
    displayed = list(viewer.dims.displayed)
    assert np.allclose(np.asarray(viewer.scene.camera.center)[-len(displayed) :], centre[displayed], atol=1e-3)
    for axis in viewer.dims.not_displayed:
        assert abs(viewer.dims.point[axis] - centre[axis]) <= max(viewer.dims.range[axis].step, 1e-6)


def test_layers_menu_entry_opens_the_widget_on_the_active_layer(viewer):
    from napari._app_model import get_app_model

    command = "napari-dropsembles.reconstruct_selected_layer"
    sphere = add_volume(viewer, sphere_volume(), "sphere")
    add_volume(viewer, sphere_volume(radius_mm=5), "other")
    viewer.layers.selection.active = sphere
    app = get_app_model()
    menu = app.menus.get_menu("napari/layers/segment")
    assert any(getattr(item, "command", None) and item.command.id == command for item in menu)
    app.commands.execute_command(command).result()  # as the menu does (the viewer is injected)
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)  # the one already open
    assert widget.input.value is sphere


def test_empty_slices_between_labelled_ones_are_reported_and_the_reading_is_a_choice(
    viewer, tiny_prior_path, sync_workers, notifications
):

    volume = sphere_volume(radius_mm=10, spacing_mm=(1.0, 1.0, 3.0))
    data = np.asarray(volume.data).copy()
    data[:, :, [5, 7]] = 0
    layer = add_volume(viewer, volume.with_data(data), "holed")
    widget = open_widget(viewer)
    tiny_settings(widget, tiny_prior_path)
    widget.input.value = layer
    assert widget.empty_slices.value == "unobserved" and widget.config().empty_slices == "unobserved"
    widget.run()
    line = widget.notes_info.text()  # the result's notes say it (toasts cut long notes off)
    assert "2 empty slice(s)" in line and "not annotated" in line and "'Empty slices'" in line, line
    assert widget.current.structures.results[1].unobserved_slices == (5, 7)
    notifications.clear()
    widget.empty_slices.value = "background"
    widget.run()
    assert widget.current.structures.results[1].unobserved_slices == ()
    assert "empty slice" not in widget.notes_info.text()


def test_opening_the_widget_warms_up_a_run_off_the_gui_thread(viewer, qtbot):
    import sys
    import threading

    from napari_dropsembles._gui import tasks

    open_widget(viewer)
    assert tasks._WARMED.is_set()
    for thread in threading.enumerate():
        if thread.name == "dropsembles-warm-up":
            thread.join(timeout=60)
    assert "torch._dynamo" in sys.modules  # what torch.optim.Adam imports on first use
    bundled = str(tasks.bundled_prior_path().resolve())
    assert any(key[0] == bundled for key in tasks._PRIORS)  # the bundled prior is read already
    tasks.warm_up()  # idempotent: returns at once
