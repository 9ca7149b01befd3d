"""npe2 reader: NIfTI / TIFF / NumPy, NRRD and Slicer .seg.nrrd, MetaImage, DICOM series and DICOM-SEG,
OME-Zarr volumes as Labels (segmentations) or Image layers, in world mm (RAS).

A folder (drag-and-drop, File > Open Folder) is read when it holds a DICOM series and/or DICOM-SEG
files (one Image layer for the largest series, one Labels layer per DICOM-SEG) or is a zarr store;
any other folder gets None, so napari offers it to other readers.

Segment names and colours of a .seg.nrrd or DICOM-SEG go to the Labels layer (its colormap, its
``features`` and ``metadata['label_names']``), where the Reconstruct widget reads structure names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .core.errors import DropsemblesError
from .core.formats import VOLUME_FORMAT_SUFFIXES, can_read, format_suffix, is_dicom_folder, read_segments
from .core.formats.segments import SegmentedVolume
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


def _is_zarr_store(path: Path) -> bool:
    return any((path / marker).exists() for marker in (".zgroup", ".zarray", ".zattrs", "zarr.json"))


def _readable(path: str) -> bool:
    """A file of a known type, a zarr store, or a folder holding a DICOM series or DICOM-SEG.

    Any other folder is refused (None from get_reader), so that napari offers it to other readers:
    the manifest's ``accepts_directories`` hands this reader every dropped folder.
    """
    folder = Path(str(path))
    if folder.is_dir():
        if format_suffix(folder) in (".zarr", ".ome.zarr"):
            return _is_zarr_store(folder)
        return is_dicom_folder(folder)
    return any(str(path).lower().endswith(s) for s in VOLUME_SUFFIXES) or can_read(path)


def get_reader(path: str | list[str]):
    """Return a reader for a supported volume path (or a DICOM folder), else None (napari tries other plugins)."""
    paths = [path] if isinstance(path, str) else list(path)
    if not paths or not all(_readable(str(p)) for p in paths):
        return None
    return read_layers


def _layer_name(path: str) -> str:
    name = Path(str(path).rstrip("/")).name
    for suffix in sorted(READER_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return name


def _layer(segmented: SegmentedVolume, name: str, source: str) -> tuple:
    """(data, kwargs, layer_type) of a volume; a segmentation's names and colours go to its Labels layer."""
    volume = segmented.volume
    data, kwargs, layer_type = volume_to_layer_data(volume, name)
    kwargs["metadata"]["source_path"] = source
    if segmented.segments:
        if layer_type != "labels":  # a segmentation stays a Labels layer, whatever its values look like
            data, layer_type = np.asarray(volume.data).astype(np.int32), "labels"
        names = segmented.names
        kwargs["metadata"]["label_names"] = names
        kwargs["features"] = {"index": list(names), "name": list(names.values())}
        colormap: dict = {label: (*rgb, 1.0) for label, rgb in segmented.colors().items()}
        colormap[None] = (0.0, 0.0, 0.0, 0.0)
        kwargs["colormap"] = colormap
    return data, kwargs, layer_type


def _read_one(path: str) -> list[tuple]:
    """The layers of one path: a DICOM folder gives its image series and each DICOM-SEG beside it."""
    if Path(path).is_dir() and is_dicom_folder(path):
        from .core.formats.dicom import read_dicom_folder

        found = read_dicom_folder(path)
        folder_name = _layer_name(path)
        return [
            _layer(segmented, folder_name if Path(source) == Path(path) else _layer_name(source), str(source))
            for source, segmented in found
        ]
    segmented = read_segments(path) if can_read(path) else SegmentedVolume(read_volume(path), ())
    return [_layer(segmented, _layer_name(path), str(path))]


def read_layers(path: str | list[str]) -> list[tuple]:
    paths = [path] if isinstance(path, str) else list(path)
    layers = []
    for p in paths:
        try:
            layers.extend(_read_one(str(p)))
        except DropsemblesError as error:
            raise ValueError(str(error)) from None
    return layers
