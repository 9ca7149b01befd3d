"""Shape-based interpolation of an observation as a field: signed distance (mm) at any world point.

Signed distances are computed per 2D slice along the observation's thickest axis (classic
shape-based interpolation) and interpolated trilinearly between slices. The baseline
``shape_based`` thresholds this field; the network reads it as a per-point input, so the learned
prior corrects the interpolation instead of re-learning sub-voxel in-plane detail from a coarse grid.

An empty slice between labelled slices of the slice axis (a "gap") is, by default, read as a
slice nobody annotated rather than as background: its distances are interpolated between the
nearest labelled slices, and :func:`frame.make_case` does not use its voxels as labels.

The slice axis (:func:`read_slices`) is the thick axis of a thick-slice acquisition, or, on a fine
(near-isotropic) grid, the *annotation axis* of a dense scan annotated every few slices: given
(``annotation_axis``) or detected (labelled slices separated by empty ones along exactly one
axis, :func:`detect_annotation_axis`). On an annotation axis the empty slices just beyond the first
and last labelled ones (up to one annotation step) are not annotated either: the slice one step
beyond is read as the empty one, as the next slice of a thick acquisition would be. Slices the user
annotated as empty (``annotated_empty``) are read as background, never as gaps.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..config.configs import EMPTY_SLICES
from ..config.errors import InputError
from ..volumes.volume import Volume, thick_axis

MAX_ANNOTATION_RUN = 2  # a detected annotation axis: runs of labelled slices at most this long (median)


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


def _filled(mask: np.ndarray, axis: int) -> np.ndarray:
    """Per slice along ``axis``: does it hold any foreground voxel."""
    return np.asarray(mask).any(axis=tuple(a for a in range(3) if a != axis))


def _runs(flags: np.ndarray) -> np.ndarray:
    """Lengths of the runs of True in a 1D boolean array."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)


def detect_annotation_axis(mask: np.ndarray) -> int | None:
    """The one axis along which labelled slices are single (or pairs) separated by empty slices.

    A dense scan annotated every few slices on its own grid; None when no axis, or more than one,
    looks like that (a dense mask, even one with a missing slice, has long runs of labelled slices).
    """
    found = []
    for axis in range(3):
        filled = _filled(mask, axis)
        labelled = np.flatnonzero(filled)
        if len(labelled) < 2 or filled[labelled[0] : labelled[-1] + 1].all():
            continue
        if np.median(_runs(filled)) <= MAX_ANNOTATION_RUN:
            found.append(axis)
    return found[0] if len(found) == 1 else None


@dataclass(frozen=True, eq=False)
class SliceReading:
    """How the slices of an observation are read: the slice axis and the slices not annotated."""

    axis: int | None  # thick axis, or annotation axis of a fine grid; None: no slice structure
    gaps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # read as not annotated
    sparse: bool = False  # True: an annotation axis on a fine grid (every slice of it can be drawn)
    step: int = 1  # typical distance (slices) between annotated slices along ``axis``

    def annotated(self, count: int) -> np.ndarray:
        """Slices of ``axis`` (of ``count``) that are read as annotated (labelled, empty or beyond the ends)."""
        return np.setdiff1d(np.arange(count), self.gaps)


def _annotation_step(labelled: np.ndarray) -> int:
    """The usual distance between annotated slices: the median of the distances over 1 (1 when dense)."""
    steps = np.diff(labelled)
    steps = steps[steps > 1]
    return int(np.median(steps)) if len(steps) else 1


def _end_gaps(first: int, last: int, step: int, count: int, known: set[int]) -> list[int]:
    """Slices beyond the labelled range, up to one step, before a slice read as annotated (or the grid's end)."""
    out = []
    for direction, start, stop in ((-1, first - 1, 0), (1, last + 1, count - 1)):
        s = start
        while abs(s - (first if direction < 0 else last)) < step and (s > stop if direction < 0 else s < stop):
            if s in known:
                break
            out.append(s)
            s += direction
    return sorted(out)


def read_slices(
    mask: np.ndarray,
    spacing: np.ndarray,
    empty_slices: str = "unobserved",
    annotation_axis: int | None = None,
    annotated_empty: Iterable[int] = (),
) -> SliceReading:
    """The slice axis (thick, given or detected annotation axis) and the slices read as not annotated."""
    check_empty_slices(empty_slices)
    mask = np.asarray(mask) > 0
    thick = thick_axis(spacing)
    if annotation_axis is not None:
        if annotation_axis not in (0, 1, 2):
            raise InputError(f"the annotation axis must be 0, 1 or 2, got {annotation_axis!r}")
        if thick is not None and annotation_axis != thick:
            raise InputError(
                f"the annotation axis {annotation_axis} is not the thick-slice axis {thick} of this acquisition; "
                "slices can only be annotated where the scan has them (leave the annotation axis unset)"
            )
    axis = (
        thick if thick is not None else annotation_axis if annotation_axis is not None else detect_annotation_axis(mask)
    )
    if axis is None:
        return SliceReading(None)
    sparse = thick is None
    labelled = np.flatnonzero(_filled(mask, axis))
    step = _annotation_step(labelled) if sparse else 1
    if empty_slices != "unobserved" or len(labelled) < 2:
        return SliceReading(axis, sparse=sparse, step=step)
    known = set(int(s) for s in annotated_empty) | set(labelled.tolist())
    gaps = [int(s) for s in gap_slices(mask, axis) if int(s) not in known]
    if sparse:
        gaps += _end_gaps(int(labelled[0]), int(labelled[-1]), step, mask.shape[axis], known)
    return SliceReading(axis, np.array(sorted(gaps), dtype=np.int64), sparse, step)


def _cap_ends(sdf: np.ndarray, gaps: np.ndarray, axis: int, filled: np.ndarray, unit_mm: float) -> None:
    """Beyond the first and last labelled slice of a sparse annotation, end the object halfway to the
    empty slice read as annotated: that slice's distance becomes ``|d_last| + unit_mm`` (still outside
    everywhere), so interpolation across the end gaps crosses zero near their middle, rounded at the rim,
    instead of right after the labelled slice (the far distance of an empty slice)."""
    moved = np.moveaxis(sdf, axis, 0)  # a view: writes land in sdf
    labelled = np.flatnonzero(filled)
    if not len(labelled):
        return
    gap_set = set(int(g) for g in gaps)
    for end, direction in ((int(labelled[0]), -1), (int(labelled[-1]), 1)):
        beyond = end + direction
        while beyond in gap_set:
            beyond += direction
        if beyond != end + direction and 0 <= beyond < moved.shape[0]:
            moved[beyond] = np.abs(moved[end]) + unit_mm


def fill_unannotated(observation: Volume, reading: SliceReading, nearest: bool = False) -> np.ndarray:
    """The observation as float32 with its gap slices interpolated along the slice axis from the nearest
    annotated slices (linear, or ``nearest``): what plain interpolation sees when gaps are not annotated."""
    data = np.asarray(observation.data, dtype=np.float32).copy()
    if reading.axis is not None and len(reading.gaps):
        _fill_gaps(data, reading.gaps, reading.axis, nearest)
    return data


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


def _fill_gaps(sdf: np.ndarray, gaps: np.ndarray, axis: int, nearest: bool = False) -> None:
    """Replace the gap slices of ``sdf`` by linear (or nearest) interpolation between the nearest other slices."""
    moved = np.moveaxis(sdf, axis, 0)  # a view: writes land in sdf
    known = np.setdiff1d(np.arange(moved.shape[0]), gaps)
    after = np.clip(np.searchsorted(known, gaps), 1, len(known) - 1)  # gaps lie inside the known range
    lower, upper = known[after - 1], known[after]
    weight = ((gaps - lower) / (upper - lower)).astype(np.float32)[:, None, None]
    if nearest:
        weight = (weight > 0.5).astype(np.float32)
    moved[gaps] = (1 - weight) * moved[lower] + weight * moved[upper]


class SliceDistanceField:
    """Per-slice signed distance of a binary observation, queried anywhere in world mm."""

    def __init__(
        self, observation: Volume, empty_slices: str = "unobserved", *, reading: SliceReading | None = None
    ) -> None:
        """``reading`` (:func:`read_slices`) gives the slice axis and the gaps; by default the thick
        axis, else a detected annotation axis."""
        check_empty_slices(empty_slices)
        self.observation = observation
        spacing = observation.spacing
        mask = np.asarray(observation.data) > 0.5
        if reading is None:
            reading = read_slices(mask, spacing, empty_slices)
        self.reading = reading
        self.axis = int(np.argmax(spacing)) if reading.axis is None else int(reading.axis)
        sdf = _slice_sdf(mask, self.axis, spacing)
        self.gaps = reading.gaps if empty_slices == "unobserved" else np.zeros(0, int)
        if len(self.gaps) and reading.sparse:
            _cap_ends(sdf, self.gaps, self.axis, _filled(mask, self.axis), float(np.delete(spacing, self.axis).min()))
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
