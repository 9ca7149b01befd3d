"""Open a saved reconstruction folder in napari (``napari-dropsembles demo --view``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ._reader import read_layers
from .core.errors import InputError
from .core.io import read_volume
from .core.mesh import Mesh, read_mesh


def result_folder_layer_data(out_dir: str | Path, observation_path: str | Path | None = None) -> list[tuple]:
    """Layer data of a folder written by ``Reconstruction.save``: mean, thresholded, variance, mesh.

    With ``observation_path`` the observation comes first and the mesh takes its transform.
    """
    from ._gui.layers import InputFrame, maps_to_layer_data

    folder = Path(out_dir)
    missing = [name for name in ("mean.nii.gz", "variance.nii.gz") if not (folder / name).is_file()]
    if missing:
        raise InputError(f"{folder} is not a reconstruction folder: missing {', '.join(missing)}")
    mean = read_volume(folder / "mean.nii.gz")
    variance = read_volume(folder / "variance.nii.gz")
    threshold = 0.5
    report = folder / "report.json"
    if report.is_file():
        threshold = float(json.loads(report.read_text()).get("config", {}).get("threshold", 0.5))
    mesh_path = folder / "mesh.ply"
    mesh = read_mesh(mesh_path) if mesh_path.is_file() else Mesh(np.zeros((0, 3)), np.zeros((0, 3), int))
    layers = []
    if observation_path is not None:
        observation = read_layers(str(observation_path))[0]
        layers.append(observation)
        frame = InputFrame.from_volume(read_volume(observation_path), observation[1]["name"])
    else:
        frame = InputFrame.from_volume(mean, folder.name)
    return layers + maps_to_layer_data(mean, variance, mesh, frame, threshold)


def show_result_folder(
    out_dir: str | Path,
    observation_path: str | Path | None = None,
    ground_truth_path: str | Path | None = None,
    *,
    viewer=None,
    run: bool = True,
):
    """A napari viewer with the observation, the result layers and (hidden) ground truth."""
    import napari

    if viewer is None:
        viewer = napari.Viewer(title=f"Dropsembles: {Path(out_dir).name}")
    layers = result_folder_layer_data(out_dir, observation_path)
    if ground_truth_path is not None and Path(ground_truth_path).is_file():
        truth = read_layers(str(ground_truth_path))[0]
        truth[1].update(name="ground truth", visible=False, opacity=0.4)
        layers.insert(1 if observation_path is not None else 0, truth)
    for data, kwargs, layer_type in layers:
        getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    if run:
        napari.run()
    return viewer
