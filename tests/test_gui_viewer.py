"""``napari-dropsembles demo --view``: a saved result folder opened in napari."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_dropsembles._viewer import show_result_folder
from napari_dropsembles.core.io import write_volume
from napari_dropsembles.core.mesh import extract_mesh, write_mesh

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
    assert viewer.layers[0].name == "observation"
    surface = roles["mesh"]
    world = surface.data[0] * np.asarray(surface.scale) + np.asarray(surface.translate)
    assert np.allclose(world, mesh.vertices_mm, atol=1e-3)
    assert np.allclose(roles["mean"].scale, 1.0) and np.allclose(roles["mean"].translate, mean.origin)
