"""npe2 sample data: the bundled low-resolution vertebra and its dense ground truth, and a real lumbar
MRI segmentation (offline).

When the bundled files are not installed (a source checkout without them), the same kind of
case is simulated in memory from the procedural vertebra generator (seed 0), still offline.
"""

from __future__ import annotations

from ._reader import read_layers, volume_to_layer_data
from .core.config.paths import bundled_mri_path, bundled_sample_paths


def sample_layers() -> tuple[tuple, tuple]:
    """(observation, ground truth) layer data; bundled files when present, else simulated."""
    paths = bundled_sample_paths()
    if paths["observation"].is_file() and paths["ground_truth"].is_file():
        return read_layers(str(paths["observation"]))[0], read_layers(str(paths["ground_truth"]))[0]
    from .core.data.simulate import simulate_volumes

    observation, truth, _info = simulate_volumes(seed=0)
    return volume_to_layer_data(observation, "observation"), volume_to_layer_data(truth, "ground truth")


def sample_vertebra() -> list[tuple]:
    observation, truth = sample_layers()
    observation[1]["name"] = "vertebra observation"
    truth[1]["name"] = "vertebra ground truth"
    truth[1]["opacity"] = 0.4
    truth[1]["visible"] = False
    return [observation, truth]


def sample_lumbar_mri() -> list[tuple]:
    """The real sagittal T2w lumbar MRI segmentation (T11-L5 and the sacrum, 3.3 mm between slices)."""
    path = bundled_mri_path()
    if not path.is_file():
        raise FileNotFoundError(f"the bundled MRI sample is not installed ({path}): reinstall napari-dropsembles")
    layers = read_layers(str(path))
    for _data, meta, _kind in layers:
        meta["name"] = "lumbar MRI segmentation"
    return layers
