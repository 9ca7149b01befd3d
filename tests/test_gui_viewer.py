"""``napari-dropsembles demo --view``: a saved result folder opened in napari."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_dropsembles._viewer import show_result_folder
from napari_dropsembles.core.io.meshes import write_mesh
from napari_dropsembles.core.io.volumes import write_volume
from napari_dropsembles.core.querying.isosurface import extract_mesh

from . import gui_support
from .conftest import sphere_volume
from .gui_support import requires_gui

pytestmark = [requires_gui, pytest.mark.gui]
viewer = gui_support.viewer  # fixture


def test_a_saved_result_folder_opens_with_its_layers_in_world_mm(viewer, tmp_path):
    from napari_dropsembles._gui.layers import role_of

    observation = sphere_volume()
    write_volume(tmp_path / "observation.nii.gz", observation, dtype=np.uint8)
    fine = sphere_volume(spacing_mm=(1.0, 1.0, 1.0))
    mean = fine.with_data(np.clip(fine.data * 0.9 + 0.05, 0, 1).astype(np.float32))
    variance = fine.with_data((mean.data * (1 - mean.data) * 0.1).astype(np.float32))
    out = tmp_path / "result"
    write_volume(out / "mean.nii.gz", mean)
    write_volume(out / "variance.nii.gz", variance)
    mesh = extract_mesh(mean, 0.5, variance)
    write_mesh(out / "mesh.ply", mesh)
    (out / "report.json").write_text(json.dumps({"config": {"threshold": 0.5}}))

    show_result_folder(out, tmp_path / "observation.nii.gz", None, viewer=viewer, run=False)
    roles = {role_of(layer): layer for layer in viewer.layers if role_of(layer)}
    assert set(roles) == {"mean", "thresholded", "variance", "mesh"}
    order = [layer.name for layer in viewer.layers]  # the heatmap under the drawn slices, the outline over them
    assert order.index(roles["variance"].name) < order.index("observation") < order.index(roles["thresholded"].name)
    surface = roles["mesh"]
    world = surface.data[0] * np.asarray(surface.scale) + np.asarray(surface.translate)
    assert np.allclose(world, mesh.vertices_mm, atol=1e-3)
    assert np.allclose(roles["mean"].scale, 1.0) and np.allclose(roles["mean"].translate, mean.origin)


def test_the_demo_view_docks_the_widget_on_the_observation_with_its_results(viewer, tmp_path):
    from napari_dropsembles._gui.layers import result_layers, role_of

    observation = sphere_volume()
    write_volume(tmp_path / "observation.nii.gz", observation, dtype=np.uint8)
    fine = sphere_volume(spacing_mm=(1.0, 1.0, 1.0))
    mean = fine.with_data(np.clip(fine.data * 0.9 + 0.05, 0, 1).astype(np.float32))
    out = tmp_path / "result"
    write_volume(out / "mean.nii.gz", mean)
    write_volume(out / "variance.nii.gz", fine.with_data((mean.data * (1 - mean.data) * 0.1).astype(np.float32)))
    write_mesh(out / "mesh.ply", extract_mesh(mean, 0.5, mean))

    show_result_folder(out, tmp_path / "observation.nii.gz", None, viewer=viewer, run=False, widget=True)
    widget = viewer.window._dock_widgets["Reconstruct with uncertainty (napari-dropsembles)"].widget()
    layer = viewer.layers["observation"]
    assert widget.input.value is layer and widget.run_panel.button.isEnabled()
    results = result_layers(viewer.layers, str(layer.unique_id))  # the results belong to the observation
    assert set(results) == {"mean", "thresholded", "variance", "mesh"}
    assert results["variance"].colorbar.visible and not results["mean"].visible
    assert all(role_of(each) for each in results.values())


def test_the_demo_says_why_no_window_opens(monkeypatch):
    from napari_dropsembles._viewer import viewer_unavailable

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    assert "no display" in viewer_unavailable()
    monkeypatch.setenv("DISPLAY", ":99")
    assert viewer_unavailable() == ""


def test_the_demo_run_from_a_script_writes_outputs_and_says_how_to_view_them(monkeypatch, tmp_path, capsys):
    from napari_dropsembles import cli

    calls = []
    real_main = cli.main

    def fake_reconstruct(argv):
        if argv and argv[0] == "reconstruct":
            calls.append(argv)
            return 0
        return real_main(argv)

    monkeypatch.setattr(cli, "main", fake_reconstruct)
    opened = []
    monkeypatch.setattr("napari_dropsembles._viewer.show_result_folder", lambda *a, **k: opened.append(a))
    assert cli.main(["demo", "--out", str(tmp_path / "demo")]) == 0  # stdin/stdout are not a terminal here
    assert calls and not opened
    out = capsys.readouterr().out
    assert "no napari window (not run from a terminal)" in out and "demo --view" in out
    assert cli.main(["demo", "--out", str(tmp_path / "demo"), "--view"]) == 0 and opened  # asked for: opens


def test_a_saved_result_stored_slice_first_opens_in_world_axis_order(viewer, tmp_path):
    """A sagittal file stored with its slice axis first and axes flipped (the MRI sample's layout): napari
    aborted drawing such a permuted affine ("Singular matrix"); the layers get it in world axis order."""
    from napari_dropsembles._gui.layers import role_of
    from napari_dropsembles.core.volumes.volume import Volume

    fine = sphere_volume(spacing_mm=(1.0, 1.0, 1.0))
    permuted = np.array([[0, 0, -1.0, 30.0], [1.0, 0, 0, -5.0], [0, -1.0, 0, 40.0], [0, 0, 0, 1.0]])
    stored = Volume(np.transpose(np.asarray(fine.data), (1, 2, 0)), permuted)  # data index (y, z, x)
    mean = stored.with_data(np.clip(np.asarray(stored.data) * 0.9 + 0.05, 0, 1).astype(np.float32))
    variance = stored.with_data((mean.data * (1 - mean.data) * 0.1).astype(np.float32))
    out = tmp_path / "result"
    write_volume(out / "mean.nii.gz", mean)
    write_volume(out / "variance.nii.gz", variance)
    write_mesh(out / "mesh.ply", extract_mesh(mean, 0.5, variance))
    (out / "report.json").write_text(json.dumps({"config": {"threshold": 0.5}}))
    write_volume(tmp_path / "observation.nii.gz", stored.with_data(np.asarray(stored.data, np.uint8)), dtype=np.uint8)

    show_result_folder(out, tmp_path / "observation.nii.gz", None, viewer=viewer, run=False)
    roles = {role_of(layer): layer for layer in viewer.layers if role_of(layer)}
    for layer in [roles["mean"], roles["variance"], roles["thresholded"], viewer.layers["observation"]]:
        assert np.allclose(layer.affine.affine_matrix, np.eye(4)) and (np.asarray(layer.scale) > 0).all()
    centre = np.argwhere(np.asarray(roles["mean"].data) > 0.5).mean(0)
    world = centre * np.asarray(roles["mean"].scale) + np.asarray(roles["mean"].translate)
    assert np.allclose(world, stored.index_to_world(np.argwhere(np.asarray(mean.data) > 0.5).mean(0)[None])[0])
