"""Corruption simulator (dataset B): how an annotator's sparse, thick-slice label of a shape looks.

``simulate_observation`` turns a :class:`~.shapes.Shape` into a uint8 0/1 label :class:`Volume` at an
anisotropic spacing, in this order: partial-volume sampling of thick voxels and thresholding,
in-plane erosion/dilation, boundary label noise, missing slices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..config.errors import InputError
from ..volumes.volume import Volume, affine_from_spacing
from .shapes import Shape, partial_volume_label


@dataclass(frozen=True)
class Corruption:
    """One way of observing a shape. Validated on construction (:class:`InputError`)."""

    in_plane_mm: float = 1.0  # spacing of the two in-plane axes
    slice_factor: float = 4.0  # slice spacing = slice_factor * in_plane_mm (>= 1; 2..5 typical)
    slice_axis: int = 2  # which array axis is thick
    slice_offset: float | None = None  # first slice phase, fraction of a slice spacing in [0, 1); None = random
    partial_volume_threshold: float = 0.5  # a voxel is 1 when the fraction of its extent inside >= this
    morphology: int = 0  # -1 erode by one voxel (in-plane, per slice), +1 dilate, 0 none
    label_noise: float = 0.0  # flip probability of voxels within 1 voxel (6-neighbourhood) of the boundary
    missing_slices: float = 0.0  # fraction of the slices touching the object that are blanked, in [0, 1)

    def __post_init__(self) -> None:
        def bad(msg):
            raise InputError(f"Corruption: {msg}")

        if not (np.isfinite(self.in_plane_mm) and self.in_plane_mm > 0):
            bad(f"in_plane_mm must be > 0, got {self.in_plane_mm}")
        if not (np.isfinite(self.slice_factor) and self.slice_factor >= 1):
            bad(f"slice_factor must be >= 1, got {self.slice_factor}")
        if self.slice_axis not in (0, 1, 2):
            bad(f"slice_axis must be 0, 1 or 2, got {self.slice_axis}")
        if self.slice_offset is not None and not (0 <= self.slice_offset < 1):
            bad(f"slice_offset must be in [0, 1) or None, got {self.slice_offset}")
        if not (0 < self.partial_volume_threshold <= 1):
            bad(f"partial_volume_threshold must be in (0, 1], got {self.partial_volume_threshold}")
        if self.morphology not in (-1, 0, 1):
            bad(f"morphology must be -1, 0 or 1, got {self.morphology}")
        if not (0 <= self.label_noise <= 1):
            bad(f"label_noise must be in [0, 1], got {self.label_noise}")
        if not (0 <= self.missing_slices < 1):
            bad(f"missing_slices must be in [0, 1), got {self.missing_slices}")

    @property
    def spacing(self) -> np.ndarray:
        """Voxel spacing (mm) of the observation grid."""
        spacing = np.full(3, float(self.in_plane_mm))
        spacing[self.slice_axis] *= self.slice_factor
        return spacing

    @property
    def subsamples(self) -> tuple[int, int, int]:
        """Partial-volume sub-samples per voxel along each axis: 2 in-plane; along the thick axis
        about one per in-plane spacing, rounded to a power of two (at least 2)."""
        subs = [2, 2, 2]
        subs[self.slice_axis] = max(2, int(2 ** np.round(np.log2(self.slice_factor))))
        return tuple(subs)


def random_corruption(
    rng: np.random.Generator,
    *,
    slice_factors=(2.0, 5.0),
    erosion_prob: float = 0.3,
    noise_prob: float = 0.3,
    missing_prob: float = 0.0,
    slice_axes=(2,),
    in_plane_mm: float = 1.0,
) -> Corruption:
    """A random :class:`Corruption`: slice factor uniform in ``slice_factors``; with ``erosion_prob``
    one voxel of erosion or dilation (equally likely); with ``noise_prob`` boundary label noise
    U(0.05, 0.3); with ``missing_prob`` U(0.1, 0.4) of the slices missing; threshold U(0.4, 0.6);
    thick axis drawn from ``slice_axes``; ``slice_offset`` left None (drawn per observation)."""
    u = rng.random(8)
    factor = float(slice_factors[0] + u[0] * (slice_factors[1] - slice_factors[0]))
    morphology = 0
    if u[1] < erosion_prob:
        morphology = -1 if u[2] < 0.5 else 1
    noise = float(0.05 + 0.25 * u[4]) if u[3] < noise_prob else 0.0
    missing = float(0.1 + 0.3 * u[6]) if u[5] < missing_prob else 0.0
    axes = tuple(slice_axes)
    axis = int(axes[int(u[7] * len(axes)) % len(axes)])
    return Corruption(
        in_plane_mm=float(in_plane_mm),
        slice_factor=factor,
        slice_axis=axis,
        slice_offset=None,
        partial_volume_threshold=float(0.4 + 0.2 * rng.random()),
        morphology=morphology,
        label_noise=noise,
        missing_slices=missing,
    )


def observation_frame(shape: Shape, corruption: Corruption, slice_offset: float, margin_mm: float = 6.0):
    """(affine, grid shape) of the observation grid: bounds + margin, the first slice
    ``slice_offset`` slice spacings below the low edge along the thick axis."""
    spacing = corruption.spacing
    lo, hi = (np.asarray(b, dtype=float) for b in shape.bounds_mm())
    lo = lo - margin_mm
    hi = hi + margin_mm
    origin = lo.copy()
    origin[corruption.slice_axis] -= slice_offset * spacing[corruption.slice_axis]
    gshape = np.maximum(np.ceil((hi - origin) / spacing - 1e-9).astype(int) + 1, 1)
    return affine_from_spacing(spacing, origin), tuple(int(s) for s in gshape)


def _inplane_structure(axis: int) -> np.ndarray:
    return np.expand_dims(ndimage.generate_binary_structure(2, 1), axis)


def boundary_band(label: np.ndarray) -> np.ndarray:
    """Voxels within one voxel (6-neighbourhood) of the label boundary, on either side."""
    s = ndimage.generate_binary_structure(3, 1)
    lab = label.astype(bool)
    return ndimage.binary_dilation(lab, s) & ~ndimage.binary_erosion(lab, s, border_value=1)


def apply_corruption(label: np.ndarray, corruption: Corruption, rng: np.random.Generator) -> np.ndarray:
    """Morphology, boundary noise and missing slices on a 0/1 label grid (the partial-volume step
    is in :func:`simulate_observation`). Returns a new uint8 array."""
    c = corruption
    lab = np.asarray(label).astype(bool)
    if c.morphology == -1:
        lab = ndimage.binary_erosion(lab, _inplane_structure(c.slice_axis))
    elif c.morphology == 1:
        lab = ndimage.binary_dilation(lab, _inplane_structure(c.slice_axis))
    if c.label_noise > 0:
        band = np.flatnonzero(boundary_band(lab))
        flip = band[rng.random(len(band)) < c.label_noise]
        lab.flat[flip] = ~lab.flat[flip]
    if c.missing_slices > 0:
        other = tuple(a for a in range(3) if a != c.slice_axis)
        touched = np.flatnonzero(lab.any(axis=other))
        n = min(int(round(c.missing_slices * len(touched))), max(len(touched) - 1, 0))
        if n > 0:
            drop = rng.choice(touched, size=n, replace=False)
            index = [slice(None)] * 3
            index[c.slice_axis] = drop
            lab[tuple(index)] = False
    return lab.astype(np.uint8)


def simulate_observation(
    shape: Shape, corruption: Corruption, rng: np.random.Generator, *, margin_mm: float = 6.0
) -> Volume:
    """A uint8 0/1 label :class:`Volume` of ``shape`` as seen through ``corruption``.

    Grid: spacing ``corruption.spacing`` covering the shape bounds + ``margin_mm``; the slice phase
    is ``corruption.slice_offset`` or uniform random. Each voxel's occupancy is the fraction of
    ``corruption.subsamples`` regularly spaced sub-samples inside the shape (partial volume),
    thresholded at ``partial_volume_threshold``; then :func:`apply_corruption`. Deterministic given
    the state of ``rng``.
    """
    c = corruption
    offset = float(rng.random()) if c.slice_offset is None else float(c.slice_offset)
    affine, gshape = observation_frame(shape, c, offset, margin_mm)
    label = partial_volume_label(shape, affine[:3, 3], c.spacing, gshape, c.subsamples, c.partial_volume_threshold)
    return Volume(apply_corruption(label, c, rng), affine)
