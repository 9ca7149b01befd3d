"""npe2 reader: NIfTI / TIFF / NumPy volumes as Labels (segmentations) or Image layers, in world mm."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .core.errors import DropsemblesError
from .core.io import VOLUME_SUFFIXES, read_volume
from .core.volume import Volume


def looks_like_labels(data: np.ndarray) -> bool:
    """Integer-valued data with few distinct values is a segmentation."""
    if data.dtype == bool:
        return True
    if data.size == 0:
        return False
    sample = np.asarray(data).reshape(-1)[:: max(1, data.size // 200_000)]
    if not np.all(np.isfinite(sample)) or not np.allclose(sample, np.round(sample)):
        return False
    return np.unique(sample).size <= 256 and sample.min() >= 0


def volume_to_layer_data(volume: Volume, name: str) -> tuple:
    """(data, kwargs, layer_type) for napari; labels stay integers, frames from the affine."""
    data = np.asarray(volume.data)
    kwargs = {"name": name, "metadata": {"affine": volume.affine.tolist(), "source_path": None}}
    kwargs.update(volume.napari_frame())
    if looks_like_labels(data):
        return data.astype(np.int32 if data.max() > 255 else np.uint8), kwargs, "labels"
    return data.astype(np.float32), kwargs, "image"


def get_reader(path: str | list[str]):
    """Return a reader for a supported volume path, else None (napari tries other plugins)."""
    paths = [path] if isinstance(path, str) else list(path)
    if not paths or not all(any(str(p).lower().endswith(s) for s in VOLUME_SUFFIXES) for p in paths):
        return None
    return read_layers


def read_layers(path: str | list[str]) -> list[tuple]:
    paths = [path] if isinstance(path, str) else list(path)
    layers = []
    for p in paths:
        name = Path(p).name
        for suffix in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
                break
        try:
            volume = read_volume(p)
        except DropsemblesError as error:
            raise ValueError(str(error)) from None
        data, kwargs, layer_type = volume_to_layer_data(volume, name)
        kwargs["metadata"]["source_path"] = str(p)
        layers.append((data, kwargs, layer_type))
    return layers
