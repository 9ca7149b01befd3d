"""What a user sees first with the defaults (issue 23): a contrasting outline over the input, the heatmap under
the drawn slices, the mesh alone in 3D over a scan (volumes hidden, camera on the result, all back in 2D),
the painted layer on top in Annotate next, Run unavailable without an input, no half-full bar after Cancel."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dropsembles._gui.layers import role_of

from . import gui_support
from .conftest import sphere_volume
from .gui_support import add_volume, requires_gui, tiny_settings
from .test_gui_annotate import paint, sparse_case

viewer = gui_support.viewer  # fixtures
tiny_prior_path = gui_support.tiny_prior_path
sync_workers = gui_support.sync_workers
pytestmark = [requires_gui, pytest.mark.gui]


def by_role(viewer) -> dict:
    return {role_of(layer): layer for layer in viewer.layers if role_of(layer)}


def scan_with_a_drawn_structure(viewer):
    """A CT-like image, the structure drawn on it (the input) and another label map (say a ground truth)."""
    sphere = sphere_volume(radius_mm=10)
    ct = viewer.add_image(np.where(sphere.data > 0, 900.0, 40.0).astype(np.float32), name="CT",
                          **sphere.napari_frame())  # fmt: skip
    drawn = add_volume(viewer, sphere, "drawn")
    other = add_volume(viewer, sphere_volume(radius_mm=7), "other labels")
    return ct, drawn, other


def test_run_is_unavailable_with_no_layer_open(viewer):
    widget = gui_support.open_widget(viewer)
    assert not widget.run_panel.button.isEnabled()
    assert "no input" in widget.run_panel.message.text()
    assert widget.run() is None and not widget.status.running  # pressed anyway (a script): one line, nothing runs


def test_the_outline_stands_out_and_the_heatmap_lies_under_the_drawn_slices(viewer, tiny_prior_path, sync_workers):
    ct, drawn, other = scan_with_a_drawn_structure(viewer)
    widget = gui_support.open_widget(viewer)
    tiny_settings(widget, tiny_prior_path)
    widget.input.value = drawn
    widget.run()
    layers = by_role(viewer)
    order = list(viewer.layers)
    assert order.index(ct) < order.index(layers["variance"]) < order.index(drawn) < order.index(layers["thresholded"])
    assert drawn.visible and layers["thresholded"].visible and layers["variance"].visible
    outline = np.asarray(layers["thresholded"].get_color(1))[:3]
    assert np.linalg.norm(outline - np.asarray(drawn.get_color(1))[:3]) > 0.5  # not the input's own colour


def test_3d_shows_the_mesh_alone_framed_and_2d_gives_the_volumes_back(
    viewer, ellipsoid_prior, tmp_path, sync_workers, qtbot
):
    from napari_dropsembles.core.networks.checkpoint import save_prior

    ct, drawn, other = scan_with_a_drawn_structure(viewer)
    hidden_by_the_user = viewer.add_image(np.zeros((4, 4, 4), np.float32), name="hidden", visible=False)
    widget = gui_support.open_widget(viewer)
    tiny_settings(widget, save_prior(ellipsoid_prior, tmp_path / "ellipsoids.safetensors"), steps=10)
    widget.input.value = drawn
    widget.run()
    mesh = by_role(viewer)["mesh"]
    assert len(mesh.data[1]) > 10  # a real surface to frame
    viewer.scene.camera.center = (0.0, 500.0, 500.0)  # looking elsewhere
    viewer.dims.ndisplay = 3
    assert mesh.visible and not any(layer.visible for layer in (ct, drawn, other))
    assert not by_role(viewer)["variance"].visible and not by_role(viewer)["thresholded"].visible
    box = mesh.extent.world[:, -3:]
    qtbot.waitUntil(lambda: np.allclose(viewer.scene.camera.center, box.mean(axis=0), atol=1.0), timeout=2000)  # framed
    ct.visible = True  # the user's choice in the layer list is kept
    viewer.dims.ndisplay = 2
    assert all(layer.visible for layer in (ct, drawn, other)) and not hidden_by_the_user.visible
    assert not mesh.visible and by_role(viewer)["thresholded"].visible


def test_cancel_leaves_no_half_full_bar(viewer, tiny_prior_path, qtbot, monkeypatch):
    from napari_dropsembles._gui.state import RunState

    monkeypatch.delenv("DROPSEMBLES_SYNC_WORKERS", raising=False)
    sphere = add_volume(viewer, sphere_volume(), "sphere")
    widget = gui_support.open_widget(viewer)
    tiny_settings(widget, tiny_prior_path, steps=5000)
    widget.input.value = sphere
    task = widget.run()
    qtbot.waitUntil(lambda: widget.status.fraction > 0.01, timeout=30_000)
    qtbot.wait(450)
    widget.cancel()
    qtbot.waitUntil(lambda: not task.running and not widget.status.running, timeout=30_000)
    assert widget.status.state is RunState.CANCELLED
    assert widget.run_panel.progress_bar.value() == 0 and widget.run_panel.progress_bar.format() == ""


@pytest.mark.slow
def test_annotate_next_paints_over_the_heatmap_and_tells_the_drawing_from_the_result(viewer, sync_workers):
    truth, annotation, _truth_layer = sparse_case(viewer)
    widget = gui_support.open_widget(viewer)
    widget.steps.value, widget.members.value, widget.spacing.value = 10, 2, 2.0
    widget.device.value = "cpu"
    widget.live_preview.value = False
    widget.input.value = annotation
    widget.run()
    layers = by_role(viewer)
    viewer.layers.move(viewer.layers.index(annotation), 0)  # the user had put it at the bottom
    widget.annotate.suggest_button.click()
    order = list(viewer.layers)
    assert viewer.layers.selection.active is annotation
    assert order.index(annotation) > max(order.index(layers["variance"]), order.index(layers["mean"]))
    assert order.index(annotation) < order.index(layers["thresholded"])  # the outline stays readable on top
    suggestion = widget.annotate.rounds[widget.current.frame.source_id].suggestions[0]
    paint(annotation, truth, suggestion.axis, suggestion.index)
    widget.annotate.refine_button.click()
    outline = np.asarray(by_role(viewer)["thresholded"].get_color(1))[:3]
    assert np.linalg.norm(outline - np.asarray(annotation.get_color(1))[:3]) > 0.5  # drawing vs result
