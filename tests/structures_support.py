"""Label volumes of two structures, sparsely annotated, shared by the structure tests and the GUI's."""

from __future__ import annotations

import numpy as np

from napari_dropsembles.core.volumes.volume import Volume, affine_from_spacing

GAP = range(9, 16)  # slices of axis 2 left out of the sparse annotation (a wide gap)


def two_ellipsoids() -> Volume:
    """Labels 1 and 2 side by side on a 1.5 mm isotropic grid (the dense truth)."""
    shape = (44, 24, 24)
    volume = Volume(np.zeros(shape, np.uint8), affine_from_spacing((1.5, 1.5, 1.5), (-33.0, -18.0, -18.0)))
    points = volume.voxel_centres_mm().reshape(*shape, 3)
    for label, centre, radii in ((1, (-15, 0, 0), (9, 10, 12)), (2, (15, 0, 0), (10, 9, 13))):
        volume.data[(((points - np.array(centre)) / np.array(radii)) ** 2).sum(-1) <= 1] = label
    return volume


def sparse(truth: Volume) -> Volume:
    """Every 3rd slice of axis 2 drawn, except across a wide gap."""
    kept = np.zeros_like(truth.data)
    slices = [s for s in range(1, truth.shape[2], 3) if s not in GAP]
    kept[:, :, slices] = truth.data[:, :, slices]
    return truth.with_data(kept)


def painted(volume: Volume, truth: Volume, index: int, label: int) -> Volume:
    """``volume`` with ``label``'s true voxels of slice ``index`` (axis 2) drawn in, as a brush would."""
    data = np.array(volume.data, copy=True)
    data[:, :, index][truth.data[:, :, index] == label] = label
    return volume.with_data(data)
