"""Where a point lies between the observed slices: the in-plane signed distances on the two nearest
observed slices on either side, its position between them and the gap (the calibration head's input)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .slice_field import SliceDistanceField

SLICES_EACH_SIDE = 2


@dataclass(frozen=True)
class NeighbourSlices:
    """Per point: ``distances_mm`` [4, N] on the observed slices (second below, below, above, second
    above), ``t`` [N] the position from the slice below (0) to the one above (1), ``gap_mm`` [N]."""

    distances_mm: np.ndarray
    t: np.ndarray
    gap_mm: np.ndarray


def neighbour_slices(field: SliceDistanceField, points_mm: np.ndarray) -> NeighbourSlices:
    """The :class:`NeighbourSlices` of world points. Slices read as not annotated are skipped; empty
    slices are assumed beyond each end of the grid (two on each side)."""
    inverse = field._inverse
    index = (np.asarray(points_mm, dtype=np.float64) @ inverse[:3, :3].T + inverse[:3, 3]).T
    axis, count = field.axis, field.observation.shape[field.axis]
    known = np.setdiff1d(np.arange(-SLICES_EACH_SIDE, count + SLICES_EACH_SIDE), field.gaps).astype(np.float64)
    along = np.clip(index[axis], -1.0, float(count))
    above = np.clip(np.searchsorted(known, along, side="right"), 2, len(known) - 2)
    planes = (known[above - 2], known[above - 1], known[above], known[above + 1])
    lower, upper = planes[1], planes[2]
    distances = np.empty((4, index.shape[1]), dtype=np.float32)
    for row, plane in enumerate(planes):
        on_plane = index.copy()
        on_plane[axis] = plane
        distances[row] = field.at_index(on_plane)
    t = np.clip((along - lower) / (upper - lower), 0.0, 1.0).astype(np.float32)
    gap = ((upper - lower) * float(field.observation.spacing[axis])).astype(np.float32)
    return NeighbourSlices(distances, t, gap)
