"""Cohort cases on disk, shared by the cohort tests and the Batch dock's."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_dropsembles.core.io.volumes import write_volume

from .conftest import sphere_volume


def write_case(folder: Path, name: str, radius_mm: float, *, truth: bool = False) -> Path:
    """A small sphere observed on 2 x 2 x 4 mm voxels (and its 2 mm ground truth)."""
    path = write_volume(
        folder / f"{name}.nii.gz", sphere_volume(radius_mm, spacing_mm=(2, 2, 4), size_mm=30), dtype=np.uint8
    )
    if truth:
        gt = sphere_volume(radius_mm, spacing_mm=(2, 2, 2), size_mm=30)
        write_volume(folder / f"{name}_gt.nii.gz", gt, dtype=np.uint8)
    return path
