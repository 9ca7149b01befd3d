"""Clinical and bio-imaging formats in and out, each through its own well-kept library.

| family | module | library |
|---|---|---|
| NRRD, Slicer ``.seg.nrrd`` | :mod:`.nrrd` | pynrrd |
| MetaImage ``.mha`` / ``.mhd`` | :mod:`.metaimage` | SimpleITK |
| DICOM series, DICOM-SEG | :mod:`.dicom` | pydicom + highdicom |
| OME-Zarr / zarr | :mod:`.ome_zarr` | zarr |
| meshes ``.vtp .vtk .ply .obj .stl .glb`` | :mod:`.meshes` | vtk, trimesh |

World coordinates inside the package are RAS+ millimetres (the NIfTI convention: +x right,
+y anterior, +z superior). DICOM, ITK, NRRD in an LPS space and Slicer's model files are LPS
(+x left, +y posterior): their x and y change sign on the way in and on the way out
(:data:`LPS_TO_RAS`), so that a voxel keeps its anatomical place whichever file it came from.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..config.errors import InputError
from ..volumes.volume import Volume
from .dicom import dicom_files, read_dicom
from .metaimage import read_itk, write_itk
from .nrrd import read_nrrd_segments, write_nrrd, write_seg_nrrd
from .ome_zarr import read_zarr, write_zarr
from .segments import Segment, SegmentedVolume

__all__ = [
    "Segment",
    "SegmentedVolume",
    "VOLUME_FORMAT_SUFFIXES",
    "format_suffix",
    "is_dicom_folder",
    "can_read",
    "find_segment",
    "read_format_volume",
    "read_segments",
    "write_format_volume",
]


# longest first: '.seg.nrrd' before '.nrrd', '.ome.zarr' before '.zarr'
VOLUME_FORMAT_SUFFIXES = (".seg.nrrd", ".ome.zarr", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".zarr")


def format_suffix(path: str | os.PathLike) -> str:
    """The suffix of ``path`` among :data:`VOLUME_FORMAT_SUFFIXES` (lower case), '' when none."""
    name = Path(path).name.lower().rstrip("/")
    for suffix in VOLUME_FORMAT_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return ""


def is_dicom_folder(path: str | os.PathLike) -> bool:
    """A folder holding at least one DICOM file (checked by pydicom, at most a few files opened)."""
    path = Path(path)
    if not path.is_dir() or format_suffix(path):
        return False
    return bool(dicom_files(path, limit=1, max_checked=200))


def can_read(path: str | os.PathLike) -> bool:
    """True when one of these formats reads ``path`` (by suffix, or a folder of DICOM files)."""
    return bool(format_suffix(path)) or is_dicom_folder(path)


def read_format_volume(path: str | os.PathLike) -> Volume:
    """Read ``path`` as a :class:`Volume` (index -> RAS mm); segmentations as their label map."""
    path = Path(path)
    suffix = format_suffix(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if suffix in (".nrrd", ".nhdr", ".seg.nrrd"):
        return read_nrrd_segments(path).volume
    if suffix in (".mha", ".mhd"):
        return read_itk(path)
    if suffix in (".zarr", ".ome.zarr"):
        return read_zarr(path)
    if suffix == ".dcm" or is_dicom_folder(path):
        return read_dicom(path).volume
    raise InputError(
        f"{path}: unknown file type; expected one of {', '.join(VOLUME_FORMAT_SUFFIXES)} or a DICOM folder"
    )


def read_segments(path: str | os.PathLike) -> SegmentedVolume:
    """Read ``path`` with its segment names and colours (none for a plain image)."""
    path = Path(path)
    suffix = format_suffix(path)
    if suffix in (".nrrd", ".nhdr", ".seg.nrrd"):
        return read_nrrd_segments(path)
    if suffix == ".dcm" or is_dicom_folder(path):
        return read_dicom(path)
    return SegmentedVolume(read_format_volume(path), ())


def find_segment(path: str | os.PathLike, name: str) -> Segment:
    """The segment called ``name`` (case-insensitive) in the segmentation at ``path``."""
    segments = read_segments(path).segments if can_read(path) else ()
    for segment in segments:
        if segment.name.strip().lower() == str(name).strip().lower():
            return segment
    if not segments:
        raise InputError(f"{path}: holds no named segments; give --label a number or 'all'")
    names = ", ".join(repr(s.name) for s in segments)
    raise InputError(f"{path}: no segment named {name!r}; segments: {names}")


def write_format_volume(path: str | os.PathLike, volume: Volume, dtype=np.float32) -> Path:
    """Write ``volume`` as NRRD (LPS), MetaImage (LPS) or OME-Zarr, by the suffix of ``path``.

    A ``.seg.nrrd`` is written as a Slicer segmentation of the volume's labels (one segment per label).
    """
    path = Path(path)
    suffix = format_suffix(path)
    data = np.asarray(volume.data)
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    volume = Volume(data, volume.affine)
    if suffix == ".seg.nrrd":
        return write_seg_nrrd(path, volume)
    if suffix in (".nrrd", ".nhdr"):
        return write_nrrd(path, volume)
    if suffix in (".mha", ".mhd"):
        return write_itk(path, volume)
    if suffix in (".zarr", ".ome.zarr"):
        return write_zarr(path, volume)
    if suffix == ".dcm":
        raise InputError(f"{path}: DICOM-SEG needs the source series; use write_dicom_seg(path, labels, source)")
    raise InputError(f"{path}: unknown file type; expected one of {', '.join(VOLUME_FORMAT_SUFFIXES)}")
