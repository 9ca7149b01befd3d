"""MetaImage volumes (``.mha`` one file, ``.mhd`` header + data file) through SimpleITK.

ITK images live in LPS: ``origin + direction @ diag(spacing) @ index`` with the index in
(x, y, z) order. Arrays here keep that index order (SimpleITK's numpy view is (z, y, x)).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..config.errors import InputError
from ..volumes.volume import Volume
from .atomic import ensure_writable_dir
from .lps import flip_lps_ras
from .messages import one_line


def read_itk(path: str | os.PathLike) -> Volume:
    """Read a 3D MetaImage as a Volume (index -> RAS mm)."""
    import SimpleITK as sitk  # SimpleITK (ITK): loaded for MetaImage only

    sitk.ProcessObject_SetGlobalWarningDisplay(False)  # ITK's multi-line warnings: we say it in one line
    path = Path(path)
    try:
        image = sitk.ReadImage(str(path))
    except Exception as exc:  # SimpleITK raises RuntimeError with a multi-line ITK message
        text = one_line(str(exc).split("ERROR: ")[-1])  # ITK's own words, not its source location
        raise InputError(f"{path}: not a readable MetaImage ({text})") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{path}: {image.GetNumberOfComponentsPerPixel()} components per voxel; expected a scalar volume"
        )
    size = list(image.GetSize())
    while len(size) > 3 and size[-1] == 1:  # a trailing time axis of length 1
        image = image[(slice(None),) * (len(size) - 1) + (0,)]
        size = list(image.GetSize())
    if image.GetDimension() != 3:
        raise InputError(f"{path}: a {image.GetDimension()}D image of size {size}; expected a 3D volume")
    data = sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # (z, y, x) -> (x, y, z)
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction @ np.diag(np.asarray(image.GetSpacing(), dtype=float))
    lps[:3, 3] = np.asarray(image.GetOrigin(), dtype=float)
    return Volume(np.ascontiguousarray(data), flip_lps_ras(lps))


def write_itk(path: str | os.PathLike, volume: Volume) -> Path:
    """Write ``volume`` as a compressed MetaImage in LPS (``.mhd`` also writes its ``.zraw`` beside it).

    Written in a temporary folder of the same directory and moved into place, so a failed write
    leaves no half-written pair.
    """
    import SimpleITK as sitk  # SimpleITK (ITK): loaded for MetaImage only


    path = Path(path)
    data = np.asarray(volume.data)
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    lps = flip_lps_ras(volume.affine)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple(float(v) for v in (lps[:3, :3] / spacing).ravel()))
    image.SetOrigin(tuple(float(v) for v in lps[:3, 3]))
    folder = ensure_writable_dir(path.parent if str(path.parent) else Path("."))
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=folder))
    try:
        sitk.WriteImage(image, str(staging / path.name), True)
        written = sorted(staging.iterdir(), key=lambda p: p.name == path.name)  # the header last
        for item in written:
            os.replace(item, folder / item.name)
    except RuntimeError as exc:
        text = one_line(" ".join(str(exc).split())[-200:])  # ITK's last words: what failed
        raise InputError(f"{path}: cannot write the MetaImage ({text})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
