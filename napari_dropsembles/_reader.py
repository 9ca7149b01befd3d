"""npe2 reader: NIfTI / TIFF / NumPy, NRRD and Slicer .seg.nrrd, MetaImage, DICOM series and DICOM-SEG,
OME-Zarr volumes as Labels (segmentations) or Image layers, in world mm (RAS).

Segment names and colours of a .seg.nrrd or DICOM-SEG go to the Labels layer (its colormap, its
``features`` and ``metadata['label_names']``), where the Reconstruct widget reads structure names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .core.errors import DropsemblesError
from .core.formats import VOLUME_FORMAT_SUFFIXES, can_read, read_segments
from .core.io import VOLUME_SUFFIXES, read_volume
from .core.volume import Volume

READER_SUFFIXES = VOLUME_SUFFIXES + VOLUME_FORMAT_SUFFIXES


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


def _readable(path: str) -> bool:
    return any(str(path).lower().rstrip("/").endswith(s) for s in VOLUME_SUFFIXES) or can_read(path)


def get_reader(path: str | list[str]):
    """Return a reader for a supported volume path (or a DICOM folder), else None (napari tries other plugins)."""
    paths = [path] if isinstance(path, str) else list(path)
    if not paths or not all(_readable(p) for p in paths):
        return None
    return read_layers


def _layer_name(path: str) -> str:
    name = Path(str(path).rstrip("/")).name
    for suffix in sorted(READER_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return name


def read_layers(path: str | list[str]) -> list[tuple]:
    paths = [path] if isinstance(path, str) else list(path)
    layers = []
    for p in paths:
        try:
            segmented = read_segments(p) if can_read(p) else None
            volume = segmented.volume if segmented is not None else read_volume(p)
        except DropsemblesError as error:
            raise ValueError(str(error)) from None
        data, kwargs, layer_type = volume_to_layer_data(volume, _layer_name(p))
        kwargs["metadata"]["source_path"] = str(p)
        if segmented is not None and segmented.segments:
            if layer_type != "labels":  # a segmentation stays a Labels layer, whatever its values look like
                data, layer_type = np.asarray(volume.data).astype(np.int32), "labels"
            names = segmented.names
            kwargs["metadata"]["label_names"] = names
            kwargs["features"] = {"index": list(names), "name": list(names.values())}
            colormap: dict = {label: (*rgb, 1.0) for label, rgb in segmented.colors().items()}
            colormap[None] = (0.0, 0.0, 0.0, 0.0)
            kwargs["colormap"] = colormap
        layers.append((data, kwargs, layer_type))
    return layers
