"""The annotate-next loop in the Reconstruct widget (issue 13): suggest a slice, paint it, refine, score."""

from __future__ import annotations

import numpy as np
import pytest

from . import gui_support
from .gui_support import requires_gui

viewer = gui_support.viewer  # fixtures
sync_workers = gui_support.sync_workers
open_widget = gui_support.open_widget
tiny_prior_path = gui_support.tiny_prior_path

pytestmark = [requires_gui, pytest.mark.gui]
STEP = 8  # the sparse annotation: every 8th slice of the dense ground truth


def by_role(viewer) -> dict:
    from napari_dropsembles._gui.layers import layer_key

    return {layer_key(layer.metadata): layer for layer in viewer.layers if layer_key(layer.metadata)}


def sparse_case(viewer):
    """The bundled vertebra's dense ground truth, annotated on every 8th axial slice of its own grid."""
    from napari_dropsembles.core.config.paths import bundled_prior_path, bundled_sample_paths
    from napari_dropsembles.core.io.volumes import read_volume

    truth_path = bundled_sample_paths()["ground_truth"]
    if not truth_path.is_file() or not bundled_prior_path().is_file():
        pytest.skip("the bundled sample and prior are not installed")
    truth = read_volume(truth_path)
    sparse = np.zeros_like(truth.data)
    sparse[:, :, ::STEP] = truth.data[:, :, ::STEP]
    annotation = viewer.add_labels(sparse, name="vertebra annotation", **truth.napari_frame())
    truth_layer = viewer.add_labels(truth.data, name="vertebra ground truth", visible=False, **truth.napari_frame())
    return truth, annotation, truth_layer


def paint(layer, truth, axis: int, index: int) -> None:
    """What a brush does: the true labels of one slice written through napari (undoable)."""
    where = [slice(None)] * 3
    where[axis] = index
    plane = np.zeros(truth.shape, bool)
    plane[tuple(where)] = True
    layer.data_setitem(np.nonzero(plane & (np.asarray(truth.data) > 0)), 1)


@pytest.mark.slow
def test_suggest_paint_refine_updates_the_layers_in_place_and_the_dice_improves(viewer, sync_workers):
    from napari_dropsembles._gui.state import RunState

    truth, annotation, truth_layer = sparse_case(viewer)
    widget = open_widget(viewer)
    widget.steps.value, widget.members.value, widget.spacing.value = 20, 2, 2.0
    widget.device.value = "cpu"
    widget.live_preview.value = False
    widget.input.value = annotation
    panel = widget.annotate
    assert not panel.suggest_button.isEnabled() and not panel.refine_button.isEnabled()  # no result yet
    widget.run()
    assert widget.status.state is RunState.DONE, widget.status.message
    source = widget.current.frame.source_id
    assert panel.ground_truth.value is truth_layer  # an open ground truth is picked up, as Evaluate does
    assert panel.suggest_button.isEnabled() and panel.refine_button.isEnabled()
    [(round_0, slices_0, expected_0, dice_0, empty_0)] = panel.history[source]
    labelled = int(np.asarray(annotation.data).any(axis=(0, 1)).sum())
    assert round_0 == 0 and slices_0 == labelled and 0.5 < dice_0 < 1 and empty_0 == ()
    assert panel.history_table.rowCount() == 1 and panel.history_table.item(0, 4).text() == f"{dice_0:.4f}"
    suggestions = panel.rounds[source].suggestions
    assert panel.suggestions.rowCount() == len(suggestions) == 5
    assert all(s.kind == "annotate" and s.axis == 2 and s.index % STEP for s in suggestions)  # unannotated slices
    assert [s.score for s in suggestions] == sorted((s.score for s in suggestions), reverse=True)

    layers = by_role(viewer)
    before = {key: np.asarray(layer.data[0] if key == "mesh" else layer.data).copy() for key, layer in layers.items()}
    viewer.layers.selection.active = layers["variance"]
    for press, suggestion in enumerate(suggestions[:2]):  # the best two: each press goes to the next one
        panel.suggest_button.click()
        assert viewer.dims.order[0] == 2 and viewer.dims.not_displayed == (2,)  # its axis on the slider
        world = annotation.data_to_world((0, 0, suggestion.index))[2]
        assert abs(viewer.dims.point[2] - world) < 1e-6 and abs(suggestion.world_mm - world) < 1e-6
        outline = by_role(viewer)["suggestion"]
        assert np.allclose(np.asarray(outline.data[0])[:, 2], suggestion.index) and outline.visible
        assert np.allclose(outline.scale, annotation.scale) and np.allclose(outline.translate, annotation.translate)
        assert viewer.layers.selection.active is annotation  # ready to paint, on the user's Labels layer
        assert panel.suggestions.currentRow() == press
        paint(annotation, truth, 2, suggestion.index)
    annotation.undo()  # napari's own undo: the second slice is taken back, then painted again
    assert not np.asarray(annotation.data)[:, :, suggestions[1].index].any()
    annotation.redo()

    panel.refine_button.click()
    assert widget.status.state is RunState.DONE, widget.status.message
    assert "refined" in widget.status.message
    after = by_role(viewer)
    assert all(after[key] is layers[key] for key in layers)  # the same layers, updated in place
    assert not np.array_equal(np.asarray(after["mean"].data), before["mean"])
    assert not np.array_equal(np.asarray(after["variance"].data), before["variance"])
    assert not after["suggestion"].visible  # the outlined slice was this round's: hidden until the next Suggest
    [_, (round_1, slices_1, expected_1, dice_1, _empty)] = panel.history[source]
    assert round_1 == 1 and slices_1 == slices_0 + 2
    assert dice_1 > dice_0, (dice_0, dice_1)
    assert expected_1.voxels < expected_0.voxels
    assert panel.history_table.rowCount() == 2
    assert all(s.index not in (suggestions[0].index, suggestions[1].index) for s in panel.rounds[source].suggestions)


def test_a_correction_on_an_annotated_slice_is_read(viewer, tiny_prior_path, sync_workers):
    from napari_dropsembles._gui.state import RunState

    from .gui_support import add_volume, tiny_settings

    layer = add_volume(viewer, sparse_sphere(), "sphere annotation")
    widget = open_widget(viewer)
    tiny_settings(widget, tiny_prior_path, spacing_mm=2.0)
    widget.input.value = layer
    widget.run()
    panel = widget.annotate
    source = widget.current.frame.source_id
    assert panel.ground_truth.value is None and panel.history[source][0][3] is None  # no ground truth: no Dice
    assert panel.history_table.item(0, 4).text() == "-"
    labelled = np.flatnonzero(np.asarray(layer.data).any(axis=(0, 1)))
    corrected = int(labelled[len(labelled) // 2])
    region = np.zeros(layer.data.shape, bool)
    region[:, :, corrected] = np.asarray(layer.data)[:, :, corrected] > 0
    layer.data_setitem(np.nonzero(region), 0)  # a slice rubbed out: the refinement reads it as it is now
    request = panel.request()
    assert not np.asarray(request.volume.data)[:, :, corrected].any()
    panel.refine_button.click()
    assert widget.status.state is RunState.DONE, widget.status.message
    assert [row[0] for row in panel.history[source]] == [0, 1]


def sparse_sphere():
    from .conftest import sphere_volume

    sphere = sphere_volume(spacing_mm=(1.0, 1.0, 1.0), size_mm=30.0)
    sparse = sphere.with_data(np.zeros_like(sphere.data))
    sparse.data[:, :, ::4] = sphere.data[:, :, ::4]
    return sparse


def test_mark_a_slice_empty_unmark_it_and_refine_reads_it_as_background(viewer, tiny_prior_path, sync_workers):
    from napari_dropsembles._gui.state import RunState

    from .gui_support import add_volume, tiny_settings

    layer = add_volume(viewer, sparse_sphere(), "sphere annotation")
    widget = open_widget(viewer)
    tiny_settings(widget, tiny_prior_path, spacing_mm=2.0)
    widget.input.value = layer
    panel = widget.annotate
    assert not panel.mark_button.isEnabled() and not panel.unmark_button.isEnabled()  # no result yet
    widget.run()
    assert widget.status.state is RunState.DONE, widget.status.message
    source = widget.current.frame.source_id
    result = widget.current.structures.results[1]
    labelled = np.flatnonzero(np.asarray(layer.data).any(axis=(0, 1)))
    beyond = int(labelled[-1]) + 1  # the empty slice past the last drawn one: read as not annotated
    assert beyond in result.unobserved_slices and panel.mark_button.isEnabled()

    panel.suggest_button.click()  # the slice axis goes on the slider; the user scrolls to the empty slice
    assert viewer.dims.not_displayed == (2,)
    viewer.dims.set_point(2, layer.data_to_world((0, 0, beyond))[2])
    panel.mark_button.click()
    assert panel.empty[source] == [beyond] and panel.empty_list.count() == 1
    assert panel.empty_list.item(0).text() == f"z {beyond}" and panel.unmark_button.isEnabled()
    # a slice holding labels cannot be marked empty: nothing changes, and the panel says why
    viewer.dims.set_point(2, layer.data_to_world((0, 0, int(labelled[1])))[2])
    panel.mark_button.click()
    assert panel.empty[source] == [beyond] and "holds labels" in panel.info.text()
    # Unmark takes the last mark back; marking again puts it back
    panel.unmark_button.click()
    assert panel.empty[source] == [] and panel.empty_list.count() == 0 and not panel.unmark_button.isEnabled()
    assert panel.mark_empty(beyond) == beyond and panel.empty_list.count() == 1

    panel.refine_button.click()
    assert widget.status.state is RunState.DONE, widget.status.message
    refined = widget.current.structures.results[1]
    assert refined.rounds == 1 and refined.config.annotated_empty == (beyond,)
    assert beyond not in refined.unobserved_slices  # read as background, not as a gap
    [_, (number, _slices, _expected, _dice, empty)] = panel.history[source]
    assert number == 1 and empty == (beyond,)
    assert panel.history_table.item(1, 2).text() == "1" and str(beyond) in panel.history_table.item(1, 2).toolTip()
    assert panel.history_table.item(0, 2).text() == "0"
    assert all(s.index != beyond for s in panel.rounds[source].suggestions)
    # the marks stay for the next rounds (and a new Run); a mark painted over is dropped from the request
    assert panel.request().annotated_empty == (beyond,) and panel.empty_list.count() == 1
    widget.run()
    assert widget.current.structures.results[1].config.annotated_empty == (beyond,)
    plane = np.zeros(layer.data.shape, bool)
    plane[10:12, 10:12, beyond] = True
    layer.data_setitem(np.nonzero(plane), 1)
    assert panel.request().annotated_empty == () and "no longer marked empty" in panel.info.text()


def test_several_structures_refine_the_changed_one_and_refuse_a_new_label(viewer, tiny_prior_path, sync_workers):
    from napari_dropsembles._gui.layers import structure_mesh_layers
    from napari_dropsembles._gui.state import RunState

    from .gui_support import add_volume, tiny_settings
    from .structures_support import two_ellipsoids

    spine = two_ellipsoids()  # labels 1 and 2
    truth = np.array([0, 2, 5], np.uint8)[spine.data]  # labels 1, 2 -> 2, 5
    spine = spine.with_data(truth.copy())
    spine.data[:, :, 1::2] = 0  # every 2nd slice drawn
    layer = add_volume(viewer, spine, "spine")
    widget = open_widget(viewer)
    tiny_settings(widget, tiny_prior_path, spacing_mm=3.0)
    widget.input.value = layer
    widget.label.value = "each"
    widget.run()
    assert widget.status.state is RunState.DONE, widget.status.message
    panel = widget.annotate
    source = widget.current.frame.source_id
    before = widget.current.structures
    assert sorted(before.results) == [2, 5]
    assert panel.suggest_button.isEnabled() and panel.refine_button.isEnabled() and panel.mark_button.isEnabled()
    suggestions = panel.rounds[source].suggestions
    assert suggestions and all(s.axis == 2 and s.index % 2 == 1 and set(s.labels) <= {2, 5} for s in suggestions)
    assert "label" in panel.suggestions.item(0, 1).text()  # the structures it helps
    layers = by_role_all(viewer, source)
    meshes = structure_mesh_layers(layers)
    assert sorted(meshes) == [2, 5]
    mean_before = np.asarray(layers["mean"].data).copy()

    index = 11  # structure 5 drawn on a slice of the gap through its middle (the tiny prior's ranking means little)
    plane = np.zeros(layer.data.shape, bool)
    plane[:, :, index] = truth[:, :, index] == 5
    layer.data_setitem(np.nonzero(plane), 5)
    panel.refine_button.click()
    assert widget.status.state is RunState.DONE, widget.status.message
    after = widget.current.structures
    assert after.kept == (2,) and after.rounds == 1 and [row[0] for row in panel.history[source]] == [0, 1]
    assert after.results[2].fitted is before.results[2].fitted  # unchanged: not fine-tuned
    assert index not in after.results[5].unobserved_slices and index in before.results[5].unobserved_slices
    np.testing.assert_array_equal(after.results[2].maps.mean.data, before.results[2].maps.mean.data)
    assert not np.array_equal(after.results[5].maps.mean.data, before.results[5].maps.mean.data)
    now = by_role_all(viewer, source)
    assert now["mean"] is layers["mean"] and not np.array_equal(np.asarray(now["mean"].data), mean_before)
    assert all(structure_mesh_layers(now)[label] is meshes[label] for label in meshes)  # updated in place

    plane[:] = False
    plane[:3, :3, 0] = True
    layer.data_setitem(np.nonzero(plane), 9)  # a label the result does not hold
    panel.refine_button.click()
    assert widget.status.state is RunState.FAILED
    message = widget.status.message
    assert "label 9 is new" in message and "reconstruct again" in message and "\n" not in message
    assert widget.current.structures is after  # nothing changed


def by_role_all(viewer, source: str) -> dict:
    from napari_dropsembles._gui.layers import result_layers

    return result_layers(viewer.layers, source)
