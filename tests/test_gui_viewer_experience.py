"""What a napari user meets (issue 12): inputs offered the right way, Run/Cancel, state that follows the
selection, readable result layers, names and colours, orientation, and a dock that fits the screen."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dropsembles.core.io.volumes import write_volume
from napari_dropsembles.core.volumes.input_kind import classify_volume
from napari_dropsembles.core.volumes.volume import Volume, affine_from_spacing

from . import gui_support
from .conftest import sphere_volume
from .gui_support import add_volume, requires_gui, tiny_settings, two_spheres

viewer = gui_support.viewer  # fixtures
notifications = gui_support.notifications
tiny_prior_path = gui_support.tiny_prior_path
sync_workers = gui_support.sync_workers
open_widget = gui_support.open_widget

pytestmark = [requires_gui, pytest.mark.gui]
PLUGIN, WIDGET = "napari-dropsembles", "Reconstruct with uncertainty"


def combo_texts(combo) -> list[str]:
    return [combo.native.itemText(i) for i in range(combo.native.count())]


def by_role(viewer) -> dict:
    from napari_dropsembles._gui.layers import role_of

    return {role_of(layer): layer for layer in viewer.layers if role_of(layer)}


def ct_like(spacing=(2.0, 2.0, 2.0)) -> Volume:
    """Hounsfield units: air, soft tissue with noise (thousands of distinct values), a bright bone ball."""
    rng = np.random.default_rng(0)
    shape = (24, 22, 20)
    data = np.full(shape, -1000, np.int32)
    data[3:-3, 3:-3, :] = rng.integers(-100, 100, (shape[0] - 6, shape[1] - 6, shape[2]))
    volume = Volume(data, affine_from_spacing(spacing, (-24.0, -22.0, -20.0)))
    inside = np.linalg.norm(volume.voxel_centres_mm() - np.array([0.0, 0.0, 0.0]), axis=1).reshape(shape) < 9
    data[inside] = 700 + rng.integers(0, 400, int(inside.sum()))
    return volume


# --------------------------------------------------------------------------- bug 1: what the input is


def test_classifier_tells_intensity_images_from_label_maps():
    ct = classify_volume(ct_like().data)
    assert ct.kind == "intensity" and ct.level == 200.0 and not ct.labels
    mri = classify_volume(np.random.default_rng(1).random((10, 10, 10)).astype(np.float32))
    assert mri.kind == "intensity" and 0.2 < mri.level < 0.8  # Otsu
    labels = classify_volume(two_spheres(labels=(2, 5)).data.astype(np.float64))  # a label map saved as float
    assert labels.kind == "labels" and labels.labels == (2, 5)
    assert classify_volume(np.zeros((4, 4, 4), np.uint8)).reason.startswith("it is empty")
    assert "2D" in classify_volume(np.zeros((4, 4))).reason


def test_a_ct_image_goes_the_threshold_path_with_a_mask_preview_and_runs(viewer, tiny_prior_path, sync_workers):
    from napari_dropsembles._gui.state import RunState

    ct = ct_like()
    layer = add_volume(viewer, ct, "CT", kind="image")
    widget = open_widget(viewer)
    tiny_settings(widget, tiny_prior_path)
    widget.input.value = layer
    assert widget.use_image_threshold.value and widget.image_threshold.value == 200.0
    assert combo_texts(widget.label) == ["(thresholded image)"]  # never a list of intensity values
    preview = by_role(viewer)["mask_preview"]
    assert np.array_equal(preview.data, ct.data >= 200) and preview.contour > 0
    assert np.allclose(preview.scale, layer.scale) and np.allclose(preview.translate, layer.translate)
    assert widget.run_panel.button.isEnabled()
    widget.image_threshold.value = 5000.0  # nothing reaches it: Run is unavailable and says why
    widget._update_mask_preview()
    assert not widget.run_panel.button.isEnabled() and "5000" in widget.run_panel.message.text()
    widget.image_threshold.value = 200.0
    widget.use_image_threshold.value = False  # an intensity image needs the threshold
    assert not widget.run_panel.button.isEnabled() and "Threshold image" in widget.run_panel.button.toolTip()
    widget.use_image_threshold.value = True
    widget.run()
    assert widget.status.state is RunState.DONE, widget.status.message
    assert "mask_preview" not in by_role(viewer)  # the result outline takes its place


def test_unusable_inputs_disable_run_with_the_reason(viewer):
    widget = open_widget(viewer)
    flat = viewer.add_image(np.ones((20, 20), np.float32), name="flat")
    widget.input.value = flat
    assert not widget.run_panel.button.isEnabled()
    assert "2D data" in widget.run_panel.message.text()
    sphere = add_volume(viewer, sphere_volume(), "sphere")
    widget.input.value = sphere
    assert widget.run_panel.button.isEnabled() and widget.label.value == "binary"


def test_a_label_map_lists_its_labels_with_names_and_defaults_to_each(viewer):
    layer = add_volume(viewer, two_spheres(labels=(2, 5)), "spine")
    layer.metadata["label_names"] = {2: "L1", 5: "L2"}
    widget = open_widget(viewer)
    widget.input.value = layer
    texts = combo_texts(widget.label)
    assert "L1 (2)" in texts and "L2 (5)" in texts and widget.label.value == "each"


# --------------------------------------------------------------------------- bug 2: threshold during a run


def test_a_threshold_moved_during_a_run_applies_to_the_new_result(viewer, tiny_prior_path, qtbot, monkeypatch):
    sphere = add_volume(viewer, sphere_volume(), "sphere")
    widget = open_widget(viewer)
    tiny_settings(widget, tiny_prior_path, steps=2)
    widget.input.value = sphere
    widget.sync = True
    widget.run()
    mesh = by_role(viewer)["mesh"]
    first_faces = len(mesh.data[1])
    widget.sync = False
    widget.steps.value = 40
    task = widget.run()
    remeshed = []
    monkeypatch.setattr(
        widget.result_panel,
        "apply_remesh",
        lambda output, original=widget.result_panel.apply_remesh: (
            remeshed.append((widget.status.running, output.threshold)),
            original(output),
        ),
    )
    widget.threshold.setValue(0.3)
    qtbot.wait(100)
    if widget.status.running:
        assert not remeshed and len(mesh.data[1]) == first_faces  # the old result is left alone
    qtbot.waitUntil(lambda: not task.running and not widget.status.running, timeout=30000)
    qtbot.waitUntil(lambda: widget.last_remesh is not None and widget.last_remesh.step_size == 1, timeout=10000)
    assert widget.threshold.value() == pytest.approx(0.3)  # the user's value is kept
    assert widget.last_remesh.threshold == pytest.approx(0.3) and all(not running for running, _ in remeshed)
    assert mesh.metadata["dropsembles"]["threshold"] == pytest.approx(0.3)


# --------------------------------------------------------------------------- bug 3: Run and Cancel


def test_a_double_click_on_run_starts_one_run_and_cancels_nothing(viewer, tiny_prior_path, qtbot, monkeypatch):
    from napari_dropsembles._gui.state import RunState

    monkeypatch.delenv("DROPSEMBLES_SYNC_WORKERS", raising=False)
    sphere = add_volume(viewer, sphere_volume(), "sphere")
    widget = open_widget(viewer)
    tiny_settings(widget, tiny_prior_path, steps=5000)
    widget.input.value = sphere
    panel = widget.run_panel
    assert panel.button is not panel.cancel_button and not panel.cancel_button.isEnabled()
    panel.button.click()
    task = widget.task
    panel.button.click()  # the second click of a double-click: Run is disabled while running
    assert widget.task is task and task.running and widget.status.running
    assert not widget.runner.cancel()  # a Cancel within a double-click of Run is ignored
    qtbot.waitUntil(lambda: widget.status.steps_seen >= 3, timeout=20000)
    qtbot.wait(450)
    panel.cancel_button.click()
    qtbot.waitUntil(lambda: not task.running, timeout=20000)
    assert widget.status.state is RunState.CANCELLED and panel.loss_curve.losses  # the curve is kept


# --------------------------------------------------------------------------- bug 4: menu, toasts, selection, progress


def test_menu_title_names_the_plugin_once(viewer):
    from napari._app_model import get_app_model

    title = get_app_model().commands["napari-dropsembles.reconstruct_selected_layer"].title
    assert title.count("Dropsembles") <= 1 and "(Dropsembles) (Dropsembles)" not in title


def test_cpu_runs_warn_in_the_status_line_only(viewer, tiny_prior_path, sync_workers, notifications, monkeypatch):
    from napari.utils.notifications import NotificationSeverity

    sphere = add_volume(viewer, sphere_volume(), "sphere")
    widget = open_widget(viewer)
    tiny_settings(widget, tiny_prior_path)
    widget.device.value = "auto"
    widget.input.value = sphere
    widget.run()
    assert not [n for n in notifications if n.severity == NotificationSeverity.WARNING]
    assert "CPU" in widget.device_info.text() or "CPU" in widget.result_info.text()


def test_the_live_preview_leaves_the_layer_selection_alone(viewer, tiny_prior_path, qtbot, monkeypatch):
    from napari_dropsembles._gui import run_settings

    monkeypatch.delenv("DROPSEMBLES_SYNC_WORKERS", raising=False)
    monkeypatch.setattr(run_settings, "PREVIEW_INTERVAL_S", 0.01)
    sphere = add_volume(viewer, sphere_volume(), "sphere")
    viewer.layers.selection.active = sphere
    widget = open_widget(viewer)
    tiny_settings(widget, tiny_prior_path, steps=5000)
    widget.live_preview.value = True
    widget.input.value = sphere
    task = widget.run()
    qtbot.waitUntil(lambda: widget._preview_layer is not None, timeout=20000)
    assert viewer.layers.selection.active is sphere and set(viewer.layers.selection) == {sphere}
    qtbot.wait(450)
    widget.cancel()
    qtbot.waitUntil(lambda: not task.running, timeout=20000)


def test_a_rerun_previews_in_the_previous_mean_and_adds_or_removes_no_layer(
    viewer, tiny_prior_path, sync_workers, monkeypatch
):
    """Adding a layer costs napari a few hundred ms under software OpenGL, removing one a full garbage
    collection: a re-run (or a refine) shows its live preview in the mean layer it will update."""
    from napari_dropsembles._gui import run_settings
    from napari_dropsembles.core.volumes.volume import Volume

    monkeypatch.setattr(run_settings, "PREVIEW_INTERVAL_S", 0.001)
    sphere = add_volume(viewer, sphere_volume(), "sphere")
    widget = open_widget(viewer)
    tiny_settings(widget, tiny_prior_path, steps=4)
    widget.live_preview.value = True
    widget.input.value = sphere
    widget.run()
    mean = by_role(viewer)["mean"]
    look = (mean.colormap.name, mean.visible, mean.opacity, mean.blending, tuple(mean.contrast_limits))
    changes, seen = [], []
    viewer.layers.events.inserted.connect(lambda event: changes.append(("added", event.value.name)))
    viewer.layers.events.removed.connect(lambda event: changes.append(("removed", event.value.name)))
    original = widget._show_preview
    monkeypatch.setattr(
        widget,
        "_show_preview",
        lambda preview: (
            original(preview),
            seen.append((widget._preview_layer is mean, mean.colormap.name, mean.visible)),
        ),
    )
    widget.seed.value = 3
    widget.run()
    assert seen and all(seen_in_mean and name == "cyan" and shown for seen_in_mean, name, shown in seen), seen
    assert changes == []  # nothing added, nothing removed
    assert by_role(viewer)["mean"] is mean
    assert (mean.colormap.name, mean.visible, mean.opacity, mean.blending, tuple(mean.contrast_limits)) == look
    # a run that ends without a result gives the mean its data back too
    data = mean.data.copy()
    widget._frame = widget.current.frame
    widget._prepare_preview(widget.request())
    widget._show_preview(Volume(np.ones((4, 4, 4), np.float32), np.diag([5.0, 5.0, 5.0, 1.0])))
    assert mean.data.shape == (4, 4, 4)
    widget._end_preview(keep_data=False)
    assert np.array_equal(mean.data, data) and mean.colormap.name == look[0] and not mean.visible


def test_progress_text_gives_the_percentage_and_the_time_left():
    from napari_dropsembles._gui.state import RunStatus
    from napari_dropsembles.core.config.progress import Progress

    status = RunStatus()
    status.start("pretraining")
    status.report(Progress("pretrain", 1, 4), fraction=0.25)
    assert status.progress_text(now=status.started_s + 1.0) == "25%"  # too early to estimate
    assert status.progress_text(now=status.started_s + 120.0) == "25% · about 6 min left"
    status.report(Progress("pretrain", 16, 1000), fraction=0.016)
    assert status.progress_text(now=status.started_s + 120.0) == "2% · about 2 h 03 min left"


# --------------------------------------------------------------------------- item 7: state of the selected input


def test_result_views_describe_the_selected_input(viewer, tiny_prior_path, sync_workers):
    first = add_volume(viewer, sphere_volume(), "first")
    second = add_volume(viewer, sphere_volume(radius_mm=8, centre_mm=(40.0, 0.0, 0.0)), "second")
    widget = open_widget(viewer)
    tiny_settings(widget, tiny_prior_path)
    widget.input.value = first
    widget.run()
    assert widget.table.rowCount() == 1 and widget.threshold.isEnabled()
    widget.input.value = second
    assert widget.current is None and widget.table.rowCount() == 0
    assert not widget.threshold.isEnabled() and "no result" in widget.result_info.text()
    widget.input.value = first
    assert widget.current is not None and widget.table.rowCount() == 1 and widget.threshold.isEnabled()


# --------------------------------------------------------------------------- item 8: readable result layers


def test_result_layers_are_readable_in_2d_and_3d(viewer, tiny_prior_path, sync_workers):
    sphere = add_volume(viewer, sphere_volume(), "sphere")
    widget = open_widget(viewer)
    tiny_settings(widget, tiny_prior_path)
    widget.input.value = sphere
    widget.run()
    layers = by_role(viewer)
    assert not layers["mean"].visible  # no grey wash over the image
    assert layers["thresholded"].visible and layers["thresholded"].contour > 0  # an outline
    assert layers["variance"].visible and "p²" in layers["variance"].name  # the unit
    # the heatmap's colour bar is drawn in the dock (napari's costs a long pause under software OpenGL)
    assert not widget.legend.isHidden() and "p²" in widget.legend.unit.text()
    assert np.allclose(widget.legend.limits, layers["variance"].contrast_limits)
    layers["variance"].contrast_limits = (0.0, 0.5)  # it follows the heatmap
    assert np.allclose(widget.legend.limits, (0.0, 0.5))
    assert not layers["mesh"].visible and not layers["mesh"].colorbar.visible  # paid for when first shown
    viewer.dims.ndisplay = 3
    assert layers["mesh"].visible and not layers["variance"].visible and not layers["thresholded"].visible
    assert layers["mesh"].colorbar.visible
    viewer.dims.ndisplay = 2
    assert layers["variance"].visible and not layers["mesh"].visible


def test_placing_the_results_leaves_the_selection_and_the_layer_controls_alone(viewer, tiny_prior_path, sync_workers):
    """napari hands a plugin a proxied viewer whose attributes come back as new proxies: the active layer read
    through it is never ``is`` the one read before, so the selection used to be put back (and the layer
    controls rebuilt twice) after every placement step. The new layers' overlays are held back while they
    are added and shown again after: none stays hidden."""
    sphere = add_volume(viewer, sphere_volume(), "sphere")
    viewer.layers.selection.active = sphere
    widget = open_widget(viewer)
    assert type(widget.viewer).__name__ == "PublicOnlyProxy"  # what a plugin gets from napari
    tiny_settings(widget, tiny_prior_path)
    widget.input.value = sphere
    events = []
    viewer.layers.selection.events.changed.connect(lambda event: events.append("changed"))
    viewer.layers.selection.events.active.connect(lambda event: events.append("active"))
    widget.run()
    assert events == [] and viewer.layers.selection.active is sphere and set(viewer.layers.selection) == {sphere}
    from napari.layers import Labels

    def shown(layer) -> dict:
        return {name: overlay.visible for name, overlay in getattr(layer, "_overlays", {}).items()}

    as_made = shown(Labels(np.zeros((2, 2, 2), np.uint8)))
    assert as_made.get("polygon") and shown(by_role(viewer)["thresholded"]) == as_made


def test_the_result_colormaps_do_not_widen_the_layer_controls():
    """Every image layer's colormap box lists all registered colormaps: a custom name wider than napari's
    widest widens the layer-controls dock, which resizes (and fully repaints) the canvas mid-placement."""
    from napari.utils.colormaps import AVAILABLE_COLORMAPS

    from napari_dropsembles._gui.layers import heatmap_colormap, mesh_colormap

    ours = {heatmap_colormap().name, mesh_colormap().name}
    widest = max(len(colormap._display_name) for name, colormap in AVAILABLE_COLORMAPS.items() if name not in ours)
    assert all(len(name) <= widest for name in ours), (ours, widest)


def test_the_first_preview_sets_the_look_first_and_draws_in_the_next_turn(viewer, tiny_prior_path, sync_workers, qtbot):
    """With the window shown, the live preview's first report (the previous mean takes the preview's look and
    box) and its first draw are two event-loop turns, not one long pause; later reports just set the data."""
    from napari_dropsembles.core.volumes.volume import Volume

    sphere = add_volume(viewer, sphere_volume(), "sphere")
    widget = open_widget(viewer)
    tiny_settings(widget, tiny_prior_path)
    widget.input.value = sphere
    widget.run()
    mean = by_role(viewer)["mean"]
    data = mean.data
    widget.sync = False  # as in the viewer: the preview reaches the widget from a worker thread
    widget._frame = widget.current.frame
    widget._prepare_preview(widget.request())
    preview = Volume(np.ones((4, 4, 4), np.float32), np.diag([5.0, 5.0, 5.0, 1.0]))
    widget._show_preview(preview)
    assert mean.colormap.name == "cyan" and np.allclose(mean.scale[-3:], 5.0)  # the look and the box: now
    assert mean.data is data and not mean.visible  # the data and the first draw: in the next turn
    qtbot.waitUntil(lambda: mean.visible and mean.data.shape == (4, 4, 4), timeout=2000)
    widget._show_preview(preview.with_data(np.zeros((4, 4, 4), np.float32)))  # later reports: at once
    assert not mean.data.any()
    widget._show_preview(preview)
    widget._end_preview(keep_data=False)  # a pending update is dropped with the run
    assert mean.data is data and not mean.visible and mean.colormap.name != "cyan"


# --------------------------------------------------------------------------- item 9: names and colours


def test_structures_have_names_colours_and_a_row_click_highlights_one(viewer, tiny_prior_path, sync_workers):
    spine = add_volume(viewer, two_spheres(labels=(2, 5)), "spine")
    spine.features = {"index": [2, 5], "name": ["L1", "L2"]}
    widget = open_widget(viewer)
    tiny_settings(widget, tiny_prior_path)
    widget.input.value = spine
    widget.label.value = "each"
    widget.run()
    table = widget.table
    assert [table.item(i, 0).text() for i in range(2)] == ["L1", "L2"]
    from qtpy.QtCore import Qt

    swatch = table.item(1, 0).data(Qt.ItemDataRole.DecorationRole)
    assert np.allclose([swatch.redF(), swatch.greenF(), swatch.blueF()], spine.get_color(5)[:3], atol=0.01)
    thresholded = by_role(viewer)["thresholded"]
    for label in (2, 5):  # the outline stands out from every label colour of the input it is drawn over
        outline, fill = np.asarray(thresholded.get_color(label))[:3], np.asarray(spine.get_color(label))[:3]
        assert np.linalg.norm(outline - fill) > 0.5, (label, outline, fill)
    table.cellClicked.emit(1, 0)
    assert thresholded.selected_label == 5 and thresholded.show_selected_label
    table.item(0, 0).setText("first lumbar")  # names can be edited and are kept
    assert table.names[2] == "first lumbar"


# --------------------------------------------------------------------------- item 10: orientation


def test_a_nifti_scan_is_shown_the_radiologists_way_in_the_same_world(viewer, tmp_path):
    from napari_dropsembles._gui.layers import viewing_order

    volume = sphere_volume(spacing_mm=(1.0, 1.0, 4.0))
    path = tmp_path / "thick.nii.gz"
    write_volume(path, volume, dtype=np.uint8)
    [layer] = viewer.open(str(path), plugin=PLUGIN)
    before = np.asarray(layer.data_to_world((3, 4, 5)))
    widget = open_widget(viewer)
    widget.input.value = layer
    assert tuple(viewer.dims.order)[0] == 2  # the 4 mm axis is on the slider
    assert tuple(viewer.scene.camera.orientation) == ("towards", "up", "left")
    assert np.allclose(layer.data_to_world((3, 4, 5)), before)  # world mm unchanged
    assert np.allclose(layer.data_to_world((3, 4, 5)), volume.index_to_world(np.array([[3, 4, 5]]))[0])
    assert viewing_order(np.diag([3.0, 3.0, 3.0, 1.0])) == (2, 1, 0)  # isotropic: axial
    assert viewing_order(np.diag([5.0, 1.0, 1.0, 1.0])) == (0, 2, 1)  # sagittal slices: superior up


# --------------------------------------------------------------------------- layout


def test_the_docks_fit_1280_by_800_and_the_table_needs_no_sideways_scroll(make_napari_viewer, qtbot):
    from qtpy.QtWidgets import QApplication

    from napari_dropsembles._gui.tasks import ReconstructOutput
    from napari_dropsembles.core.results.structures import StructureRow

    gui_support.register_plugin()
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1280, 800)
    widgets = [
        viewer.window.add_plugin_dock_widget(PLUGIN, name)[1]
        for name in (WIDGET, "Train a prior", "Evaluate against ground truth", "Batch (cohort)")
    ]
    for _ in range(10):
        QApplication.processEvents()
    qtbot.wait(100)
    assert window.width() <= 1280 and window.height() <= 800, (window.width(), window.height())
    for widget in widgets:  # every dock scrolls: none pushes another to a blank strip
        assert hasattr(widget, "scroll_area") and widget.height() >= 120, (type(widget).__name__, widget.height())
        assert not widget.visibleRegion().isEmpty()
    reconstruct = widgets[0]
    assert not reconstruct.advanced.isExpanded()  # seed, spacing, device, ... tucked away
    rows = [
        StructureRow(
            label=22,
            volume_ml=41.23,
            volume_ml_std=0.51,
            band_variance=0.0123,
            centre_mm=(0, 0, 0),
            flagged=True,
            reason="volume spread 3x the median",
        ),
        StructureRow(label=23, volume_ml=35.0, volume_ml_std=0.2, band_variance=0.0021, centre_mm=(0, 0, 0)),
    ]
    reconstruct.table.set_rows(rows, {22: "vertebra L1", 23: "vertebra T12"})
    reconstruct.table.show()
    for _ in range(5):
        QApplication.processEvents()
    table = reconstruct.table
    header = table.horizontalHeader()
    assert table.horizontalScrollBar().maximum() == 0
    flag = len(table.HEADERS) - 1
    assert header.sectionViewportPosition(flag) + header.sectionSize(flag) <= table.viewport().width() + 1
    assert table.item(0, flag).text() == "⚠" and "spread" in table.item(0, flag).toolTip()
    assert ReconstructOutput  # the table is what a result fills


def test_each_structure_has_its_own_mesh_layer_named_and_coloured_like_its_label(
    viewer, tiny_prior_path, sync_workers, qtbot
):
    from napari_dropsembles._gui.layers import result_layers, structure_mesh_layers

    spine = add_volume(viewer, two_spheres(labels=(2, 5)), "spine")
    spine.features = {"index": [2, 5], "name": ["L1", "L2"]}
    widget = open_widget(viewer)
    tiny_settings(widget, tiny_prior_path, spacing_mm=2.0)
    widget.input.value = spine
    widget.label.value = "each"
    widget.run()
    source = widget.current.frame.source_id
    layers = result_layers(viewer.layers, source)
    meshes = structure_mesh_layers(layers)
    assert sorted(meshes) == [2, 5] and "mesh" not in layers  # one Surface per structure, not one for all
    assert [meshes[2].name, meshes[5].name] == ["spine mesh L1", "spine mesh L2"]
    assert widget.mesh_colour.currentText() == "structure"  # several structures: label colours by default
    for label, layer in meshes.items():
        assert np.allclose(np.asarray(layer.vertex_colors)[0], spine.get_color(label), atol=1e-3)
    structures = widget.current.structures  # an untrained prior: a level where both have a surface
    mean = structures.mean.data
    level = round(float(np.median(mean[mean > mean.min() + 0.5 * (mean.max() - mean.min())])), 2)
    assert all(not result.remesh(level).is_empty for result in structures.results.values())
    widget.threshold.setValue(level)
    qtbot.waitUntil(lambda: widget.last_remesh is not None and widget.last_remesh.step_size == 1, timeout=5000)
    for label, layer in meshes.items():  # each structure's own surface, in the input's frame
        own = structures.results[label].remesh(level)
        assert len(layer.data[1]) == len(own.faces)
        world = np.asarray(layer.data[0]) * np.asarray(layer.scale) + np.asarray(layer.translate)
        assert np.allclose(world, own.vertices_mm, atol=1e-3)
        assert np.allclose(np.asarray(layer.vertex_colors)[0], spine.get_color(label), atol=1e-3)
    widget._select_row(1)  # L2 selected: L1's mesh dimmed
    assert np.allclose(np.asarray(meshes[5].vertex_colors)[0], spine.get_color(5), atol=1e-3)
    assert np.asarray(meshes[2].vertex_colors)[0, :3].sum() < 0.5 * np.asarray(spine.get_color(2))[:3].sum()
    widget.table.item(0, 0).setText("first lumbar")  # renamed in the table: the layer follows
    assert meshes[2].name == "spine mesh first lumbar"
    viewer.dims.ndisplay = 3
    assert all(layer.visible for layer in meshes.values()) and not any(m.colorbar.visible for m in meshes.values())
    widget.mesh_colour.setCurrentText("variance")
    assert all(layer.vertex_colors is None for layer in meshes.values())
    widget.run()  # a re-run updates the same layers
    assert structure_mesh_layers(result_layers(viewer.layers, source)) == meshes


def test_a_single_structure_keeps_one_mesh_coloured_by_variance(viewer, tiny_prior_path, sync_workers):
    sphere = add_volume(viewer, sphere_volume(), "sphere")
    widget = open_widget(viewer)
    tiny_settings(widget, tiny_prior_path)
    widget.input.value = sphere
    widget.run()
    meshes = [layer for layer in viewer.layers if by_role(viewer).get("mesh") is layer]
    assert len(meshes) == 1 and meshes[0].name == "sphere mesh" and meshes[0].vertex_colors is None
    assert widget.mesh_colour.currentText() == "variance"
