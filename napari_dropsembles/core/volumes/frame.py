"""The normalised frame of one case: world mm -> the unit cube the networks work in.

World mm -> unit cube [-0.5, 0.5]^3 by ONE isotropic scale, axes along the observation's voxel
axes (so thick slices map to grid planes), ordered and signed by the world axes with the thick axis
last (:func:`canonical_order`): the same geometry stored in any axis order gives the same case.
Pretraining and reconstruction both frame their cases here (core/fitting/case.make_case), so a
prior always sees its inputs framed the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..config.errors import InputError
from .volume import THICK_AXIS_RATIO, Volume, thick_axis

if TYPE_CHECKING:  # annotations only: the slices are read above this layer (core/slices)
    from ..slices.slice_field import SliceReading


@dataclass(frozen=True, eq=False)
class Frame:
    """``normalised = rotation.T @ (world - centre_mm) / scale_mm``."""

    centre_mm: np.ndarray
    scale_mm: float
    rotation: np.ndarray

    def to_normalised(self, points_mm: np.ndarray) -> np.ndarray:
        return ((np.asarray(points_mm, dtype=np.float64) - self.centre_mm) @ self.rotation) / self.scale_mm

    def to_world(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(points, dtype=np.float64) * self.scale_mm @ self.rotation.T + self.centre_mm

    def box_affine(self, spacing_mm: float) -> tuple[np.ndarray, tuple[int, int, int]]:
        """An isotropic output grid covering the unit cube, axes along the observation's axes."""
        size = int(np.ceil(self.scale_mm / spacing_mm))
        affine = np.eye(4)
        affine[:3, :3] = self.rotation * spacing_mm
        first = np.full(3, -(size - 1) / 2 * spacing_mm)
        affine[:3, 3] = self.rotation @ first + self.centre_mm
        return affine, (size, size, size)

    def aligned_grid(self, observation: Volume) -> tuple[np.ndarray, tuple[int, int, int]]:
        """The observation's own grid over the unit cube, its thick axis refined to the finest spacing.

        In-plane voxel centres coincide with the observation's, and every observed slice is a plane
        of the grid, so the maps overlay the scan voxel for voxel (no resampling).
        """
        spacing = observation.spacing
        refine = np.maximum(1, np.rint(spacing / spacing.min())).astype(int)
        corners = self.to_world(np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)]))
        fine_index = observation.world_to_index(corners) * refine
        lo = np.ceil(fine_index.min(0) - 1e-6).astype(int)
        hi = np.floor(fine_index.max(0) + 1e-6).astype(int)
        affine = np.array(observation.affine, dtype=float)
        affine[:3, :3] = affine[:3, :3] / refine
        affine[:3, 3] = observation.index_to_world((lo / refine)[None])[0]
        shape = tuple(int(n) for n in np.maximum(hi - lo + 1, 1))
        return affine, shape  # type: ignore[return-value]

    def to_dict(self) -> dict:
        return {
            "centre_mm": self.centre_mm.tolist(),
            "scale_mm": float(self.scale_mm),
            "rotation": self.rotation.tolist(),
        }


def frame_from_observation(observation: Volume, box_padding: float = 0.1, reading: SliceReading | None = None) -> Frame:
    """Frame around the observed foreground: isotropic scale, padded by ``box_padding`` and by one
    slice spacing on each side of every thick axis (the object continues past the last slice).

    With a sparse annotation axis (``reading.sparse``), that axis is padded by one annotation step and
    becomes the frame's last axis, like a thick axis (the slice direction priors are trained on).
    """
    mask = np.asarray(observation.data) > 0
    if not mask.any():
        raise InputError("the mask is empty: nothing to reconstruct")
    spacing = observation.spacing
    rotation = observation.affine[:3, :3] / spacing
    index = np.argwhere(mask)
    lo = (index.min(0) - 0.5) * spacing
    hi = (index.max(0) + 0.5) * spacing
    pad = (spacing > THICK_AXIS_RATIO * spacing.min()) * spacing
    slice_axis = thick_axis(spacing)
    if reading is not None and reading.sparse and reading.axis is not None:
        slice_axis = reading.axis
        pad[slice_axis] = reading.step * spacing[slice_axis]
    lo = lo - pad
    hi = hi + pad
    centre_index_mm = (lo + hi) / 2
    centre = rotation @ centre_index_mm + observation.origin
    scale = float((hi - lo).max() * (1.0 + 2 * box_padding))
    return Frame(centre_mm=centre, scale_mm=scale, rotation=canonical_axes(rotation, slice_axis))


def canonical_axes(rotation: np.ndarray, thick: int | None = None) -> np.ndarray:
    """The voxel directions reordered and flipped to lie closest to the world axes.

    The same world geometry stored with another axis order or with flipped axes gets the same
    frame, so the encoder sees the same input (frame invariance); grid planes stay slice planes.
    """
    order, signs = canonical_order(rotation, thick)
    return np.asarray(rotation, dtype=float)[:, order] * signs


def canonical_order(rotation: np.ndarray, thick: int | None = None) -> tuple[list[int], np.ndarray]:
    """(voxel axis for each frame axis, +-1 per frame axis) of :func:`canonical_axes`.

    Frame axes follow the world axes, except that a thick voxel axis becomes the last frame axis: the
    slice direction priors are trained on (docs/REAL.md: on sagittal and coronal slices this lifted
    Dice from 0.906 to 0.912), the other two keeping world order.
    """
    rotation = np.asarray(rotation, dtype=float)
    order = [-1, -1, -1]
    free = [0, 1, 2]
    for world in np.argsort(-np.abs(rotation).max(1)):  # most decided world axis first
        voxel = max(free, key=lambda a: abs(rotation[world, a]))
        order[world] = voxel
        free.remove(voxel)
    signs = np.where(np.diag(rotation[:, order]) < 0, -1.0, 1.0)
    if thick is not None and order[2] != thick:
        moved = [w for w in range(3) if order[w] != thick] + [order.index(thick)]
        order, signs = [order[w] for w in moved], signs[moved]
    return order, signs


def in_world_axis_order(volume: Volume, tolerance: float = 1e-3) -> Volume:
    """The same grid stored with its voxel axes along +x, +y, +z (data transposed and flipped) when its
    axes are the world axes in another order or direction (a sagittal MRI stored slice-first, an LPS
    file); else itself. napari slices such a permuted affine as an oblique one and fails to draw it."""
    rotation = volume.affine[:3, :3] / volume.spacing
    order, signs = canonical_order(rotation)  # the voxel axis along each world axis, and its direction
    if not np.allclose(np.abs(rotation[np.arange(3), order]), 1, atol=tolerance):
        return volume  # an oblique grid: no voxel axis lies along a world axis
    if order == [0, 1, 2] and (signs > 0).all():
        return volume
    data = np.transpose(np.asarray(volume.data), order)
    data = np.flip(data, axis=tuple(int(w) for w in np.flatnonzero(signs < 0)))
    to_old = np.zeros((4, 4))  # new voxel index -> old voxel index
    to_old[3, 3] = 1.0
    for world, voxel in enumerate(order):
        to_old[voxel, world] = signs[world]
        to_old[voxel, 3] = 0.0 if signs[world] > 0 else volume.shape[voxel] - 1
    affine = volume.affine @ to_old
    affine[:3, :3] = np.diag(np.diag(affine[:3, :3]))  # exact: the tolerance's off-diagonal crumbs dropped
    return Volume(np.ascontiguousarray(data), affine)
