"""Open a saved reconstruction folder in napari (``napari-dropsembles demo``, ``demo --view``)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from ._reader import read_layers
from .core.io.volumes import read_volume
from .core.results.folder import read_reconstruction

INSTALL_HINT = 'pip install "napari-dropsembles[all]" (napari with a Qt backend)'


def viewer_unavailable() -> str:
    """Why a napari window cannot open here ('' when it can): no Qt backend, or no display."""
    if importlib.util.find_spec("napari") is None:
        return f"napari is not installed: {INSTALL_HINT}"
    if not any(importlib.util.find_spec(name) for name in ("PyQt6", "PyQt5", "PySide6", "PySide2")):
        return f"napari has no Qt backend: {INSTALL_HINT}"
    if os.environ.get("QT_QPA_PLATFORM", "") == "offscreen":
        return "QT_QPA_PLATFORM=offscreen"
    if sys.platform in ("darwin", "win32") or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return ""
    return "no display (DISPLAY is not set)"


def result_folder_layer_data(
    out_dir: str | Path, observation_path: str | Path | None = None, frame=None
) -> list[tuple]:
    """Layer data of a folder written by ``Reconstruction.save``: mean, variance, thresholded, mesh.

    With ``observation_path`` the observation comes first and the mesh takes its transform; with
    ``frame`` (an :class:`~._gui.layers.InputFrame` of a layer already shown) the results belong to
    that layer (a re-run from the widget replaces them).
    """
    from ._gui.layers import InputFrame, maps_to_layer_data

    saved = read_reconstruction(out_dir)
    layers = []
    if frame is None and observation_path is not None:
        observation = read_layers(str(observation_path))[0]
        layers.append(observation)
        frame = InputFrame.from_volume(read_volume(observation_path), observation[1]["name"])
    elif frame is None:
        frame = InputFrame.from_volume(saved.mean, saved.folder.name)
    return layers + maps_to_layer_data(saved.mean, saved.variance, saved.mesh, frame, saved.threshold)


def add_result_folder(viewer, out_dir: str | Path, observation_path=None, ground_truth_path=None) -> list:
    """Open a saved result in ``viewer`` as a run in the dock shows it: the observation (when given), the result
    layers placed next to it with the default look, a ground truth hidden. Returns the layers added."""
    from ._gui.display import result_display
    from ._gui.layers import TAG, InputFrame, label_colours, outline_colormap, role_of
    from ._gui.placement import place_result_layers
    from .core.config.progress import drive

    added = []
    observation = None
    if observation_path is not None:
        data, kwargs, layer_type = read_layers(str(observation_path))[0]
        observation = getattr(viewer, f"add_{layer_type}")(data, **kwargs)
        added.append(observation)
    if ground_truth_path is not None and Path(ground_truth_path).is_file():
        data, kwargs, layer_type = read_layers(str(ground_truth_path))[0]
        kwargs.update(name="ground truth", visible=False)
        added.append(getattr(viewer, f"add_{layer_type}")(data, **kwargs))
    frame = InputFrame.from_layer(observation) if observation is not None else None
    layer_data = result_folder_layer_data(out_dir, frame=frame)
    for _data, kwargs, layer_type in layer_data:  # the defaults of a run in the dock: a contrasting outline
        if layer_type == "labels":
            kwargs["colormap"] = outline_colormap([1], list(label_colours(observation, [1]).values()))
    source_id = layer_data[0][1]["metadata"][TAG]["source"]
    placed = drive(place_result_layers(viewer, source_id, layer_data, anchor=observation))
    for layer in placed:  # a saved result is not the dock's: napari's colour bar says the heatmap's range
        if role_of(layer) == "variance":
            layer.colorbar.visible = True
    result_display(viewer).show(viewer.dims.ndisplay)
    return added + list(placed)


def show_result_folder(
    out_dir: str | Path,
    observation_path: str | Path | None = None,
    ground_truth_path: str | Path | None = None,
    *,
    viewer=None,
    run: bool = True,
    widget: bool = False,
):
    """A napari viewer with the observation, the result layers, (hidden) ground truth and, with
    ``widget``, the Reconstruct widget docked on the observation."""
    import napari

    if viewer is None:
        viewer = napari.Viewer(title=f"Dropsembles: {Path(out_dir).name}")
    added = add_result_folder(viewer, out_dir, observation_path, ground_truth_path)
    observation = added[0] if observation_path is not None else None
    if widget:
        from ._widget import open_reconstruct_widget

        if observation is not None:
            viewer.layers.selection.active = observation
        open_reconstruct_widget(viewer)
    if run:
        napari.run()
    return viewer
