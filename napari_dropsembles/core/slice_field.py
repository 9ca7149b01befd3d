"""Shape-based interpolation of an observation as a field: signed distance (mm) at any world point.

Signed distances are computed per 2D slice along the observation's thickest axis (classic
shape-based interpolation) and interpolated trilinearly between slices. The baseline
``shape_based`` thresholds this field; the network reads it as a per-point input, so the learned
prior corrects the interpolation instead of re-learning sub-voxel in-plane detail from a coarse grid.

An empty slice between labelled slices of the thick axis (a "gap") is, by default, read as a
slice nobody annotated rather than as background: its distances are interpolated between the
nearest labelled slices, and :func:`frame.make_case` does not use its voxels as labels.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .errors import InputError
from .volume import Volume

THICK_AXIS_RATIO = 1.5  # an axis is "thick" when its spacing exceeds the finest by this factor
EMPTY_SLICES = ("unobserved", "background")  # how empty slices between labelled ones are read


def thick_axis(spacing: np.ndarray) -> int | None:
    """The slice axis: the coarsest axis when it is thick, else None (a near-isotropic volume)."""
    spacing = np.asarray(spacing, dtype=float)
    axis = int(np.argmax(spacing))
    return axis if spacing[axis] > THICK_AXIS_RATIO * spacing.min() else None


def gap_slices(mask: np.ndarray, axis: int | None) -> np.ndarray:
    """Indices of the empty slices along ``axis`` that lie between two non-empty ones."""
    if axis is None:
        return np.zeros(0, dtype=np.int64)
    other = tuple(a for a in range(3) if a != axis)
    filled = np.asarray(mask).any(axis=other)
    labelled = np.flatnonzero(filled)
    if len(labelled) < 2:
        return np.zeros(0, dtype=np.int64)
    inner = np.arange(labelled[0], labelled[-1] + 1)
    return inner[~filled[inner]]


def check_empty_slices(empty_slices: str) -> None:
    if empty_slices not in EMPTY_SLICES:
        raise InputError(f"empty slices must be read as one of {', '.join(EMPTY_SLICES)}, got {empty_slices!r}")


def _slice_sdf(mask: np.ndarray, axis: int, spacing: np.ndarray) -> np.ndarray:
    """Signed distance (mm, negative inside) of ``mask`` computed per 2D slice along ``axis``."""
    in_plane = np.delete(spacing, axis)
    far = float(np.sqrt(np.sum((np.delete(np.array(mask.shape), axis) * in_plane) ** 2)))
    sdf = np.empty(mask.shape, dtype=np.float32)
    for s in range(mask.shape[axis]):
        m = np.take(mask, s, axis=axis)
        if not m.any():
            d = np.full(m.shape, far, dtype=np.float32)
        elif m.all():
            d = np.full(m.shape, -far, dtype=np.float32)
        else:
            d = ndimage.distance_transform_edt(~m, sampling=in_plane) - ndimage.distance_transform_edt(
                m, sampling=in_plane
            )
        index = [slice(None)] * 3
        index[axis] = s
        sdf[tuple(index)] = d
    return sdf


def _fill_gaps(sdf: np.ndarray, gaps: np.ndarray, axis: int) -> None:
    """Replace the gap slices of ``sdf`` by linear interpolation between the nearest other slices."""
    moved = np.moveaxis(sdf, axis, 0)  # a view: writes land in sdf
    known = np.setdiff1d(np.arange(moved.shape[0]), gaps)
    after = np.searchsorted(known, gaps)  # gaps lie strictly inside the labelled range
    lower, upper = known[after - 1], known[after]
    weight = ((gaps - lower) / (upper - lower)).astype(np.float32)[:, None, None]
    moved[gaps] = (1 - weight) * moved[lower] + weight * moved[upper]


class SliceDistanceField:
    """Per-slice signed distance of a binary observation, queried anywhere in world mm."""

    def __init__(self, observation: Volume, empty_slices: str = "unobserved") -> None:
        check_empty_slices(empty_slices)
        self.observation = observation
        spacing = observation.spacing
        self.axis = int(np.argmax(spacing))
        mask = np.asarray(observation.data) > 0.5
        sdf = _slice_sdf(mask, self.axis, spacing)
        self.gaps = gap_slices(mask, thick_axis(spacing)) if empty_slices == "unobserved" else np.zeros(0, int)
        if len(self.gaps):
            _fill_gaps(sdf, self.gaps, self.axis)
        self.far_mm = float(np.abs(sdf).max()) if sdf.size else 1.0
        self._padded = np.pad(sdf, 1, mode="constant", constant_values=self.far_mm)  # empty beyond the grid
        self._shape = np.array(sdf.shape)
        self._inverse = np.linalg.inv(observation.affine)

    def at_index(self, index: np.ndarray) -> np.ndarray:
        """Signed distance (mm) at (3, N) fractional observation indices; far outside the grid."""
        d = ndimage.map_coordinates(self._padded, index + 1.0, order=1, mode="nearest")
        beyond = np.any((index < -1.0) | (index > self._shape[:, None]), axis=0)
        d[beyond] = self.far_mm
        return d

    def __call__(self, points_mm: np.ndarray) -> np.ndarray:
        """Signed distance (mm, negative inside) at (N, 3) world points."""
        points_mm = np.asarray(points_mm, dtype=np.float64)
        index = points_mm @ self._inverse[:3, :3].T + self._inverse[:3, 3]
        return self.at_index(index.T).astype(np.float32)
