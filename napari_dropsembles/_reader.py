"""npe2 reader: NIfTI / TIFF / NumPy, NRRD and Slicer .seg.nrrd, MetaImage, DICOM series and DICOM-SEG,
OME-Zarr volumes as Labels (segmentations) or Image layers, in world mm (RAS).

A folder (drag-and-drop, File > Open Folder) is read when it holds a DICOM series and/or DICOM-SEG
files (one Image layer for the largest series, one Labels layer per DICOM-SEG) or is a zarr store;
any other folder gets None, so napari offers it to other readers.

Segment names and colours of a .seg.nrrd or DICOM-SEG (or a NIfTI label-table extension) go to the Labels
layer (its colormap, its ``features`` and ``metadata['label_names']``), where the Reconstruct dock reads
structure names; a plain label map from TotalSegmentator or VerSe is named from the known tables when its
labels agree with one (core/volumes/label_tables), and every label map gets one distinct colour per label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .core.config.errors import DropsemblesError
from .core.io.formats import VOLUME_FORMAT_SUFFIXES, can_read, format_suffix, is_dicom_folder, read_segments
from .core.io.nifti_labels import nifti_label_table
from .core.io.segments import SegmentedVolume
from .core.io.volumes import VOLUME_SUFFIXES, read_volume
from .core.volumes.frame import in_world_axis_order
from .core.volumes.input_kind import is_label_map
from .core.volumes.label_tables import describe_labels
from .core.volumes.volume import Volume

READER_SUFFIXES = VOLUME_SUFFIXES + VOLUME_FORMAT_SUFFIXES


def looks_like_labels(data: np.ndarray) -> bool:
    """Integer-valued data with few distinct values is a segmentation (core's one answer, on a subsample)."""
    return is_label_map(data, max_labels=255, sample_values=200_000)  # 255 labels and the background


def volume_to_layer_data(volume: Volume, name: str) -> tuple:
    """(data, kwargs, layer_type) for napari; labels stay integers, frames from the affine (voxel axes put in
    world order first, so that napari draws a sagittal or LPS-stored file as the axis-aligned grid it is)."""
    volume = in_world_axis_order(volume)
    data = np.asarray(volume.data)
    kwargs = {"name": name, "metadata": {"affine": volume.affine.tolist(), "source_path": None}}
    kwargs.update(volume.napari_frame())
    if looks_like_labels(data):
        return data.astype(np.int32 if data.max() > 255 else np.uint8), kwargs, "labels"
    window = ct_window(data)
    if window is not None:
        kwargs["contrast_limits"] = window
    return data.astype(np.float32), kwargs, "image"


CT_WINDOW_HU = (-450.0, 1050.0)  # bone and soft tissue at once (level 300, width 1500): vertebrae read at a glance


def ct_window(data: np.ndarray) -> tuple[float, float] | None:
    """A CT in Hounsfield units (air near -1000, bone above 300) opens in a bone window; None for other images
    (napari's own range then)."""
    sample = np.asarray(data).reshape(-1)[:: max(1, data.size // 200_000)]
    if sample.size == 0 or sample.dtype.kind not in "iuf" or not np.isfinite(sample).all():
        return None
    low, high = np.percentile(sample, [1, 99.9])
    return CT_WINDOW_HU if low <= -700 and high >= 300 else None


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
        _name_labels(kwargs, segmented.names, segmented.colors(), "file")
    elif layer_type == "labels":  # a label map: its own label table, else a known one (TotalSegmentator, VerSe)
        described = describe_labels(volume, nifti_label_table(source))
        _name_labels(kwargs, described.names, described.colours, described.source)
    return data, kwargs, layer_type


def _name_labels(kwargs: dict, names: dict[int, str], colours: dict[int, tuple], source: str) -> None:
    """Structure names (metadata and features, read by the Reconstruct dock) and one colour per label."""
    if names:
        kwargs["metadata"]["label_names"] = dict(names)
        kwargs["metadata"]["label_names_from"] = source
        kwargs["features"] = {"index": list(names), "name": list(names.values())}
    if colours:
        colormap: dict = {int(label): (*[float(c) for c in rgb[:3]], 1.0) for label, rgb in colours.items()}
        colormap[None] = (0.0, 0.0, 0.0, 0.0)
        kwargs["colormap"] = colormap


def _read_one(path: str) -> list[tuple]:
    """The layers of one path: a DICOM folder gives its image series and each DICOM-SEG beside it."""
    if Path(path).is_dir() and is_dicom_folder(path):
        from .core.io.dicom import read_dicom_folder

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
