"""The normalised frame of one case and the encoder input made from an observation.

World mm -> unit cube [-0.5, 0.5]^3 by ONE isotropic scale, axes along the observation's voxel
axes (so thick slices map to grid planes), ordered and signed by the world axes with the thick axis
last (:func:`canonical_order`): the same geometry stored in any axis order gives the same case.
Pretraining and reconstruction both go through :func:`make_case`, so a prior always sees its inputs
framed the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .config import ModelConfig
from .errors import InputError
from .slice_field import THICK_AXIS_RATIO, SliceDistanceField, SliceReading, check_empty_slices, read_slices, thick_axis
from .volume import Volume

if TYPE_CHECKING:
    from .slice_uncertainty import MemberPerturbation


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


@dataclass(frozen=True, eq=False)
class PointInputs:
    """Turns normalised points into decoder inputs: xyz, plus the shape-based interpolation."""

    frame: Frame
    field: SliceDistanceField | None
    sdf_scale: float
    perturbation: MemberPerturbation | None = None  # per-member shifts of the distance (member diversity)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """[N, 3 + point_features] inputs, or [M, N, 4] when members read perturbed distances."""
        points = np.asarray(points, dtype=np.float32)
        if self.field is None:
            return points[:, :3]
        world = self.frame.to_world(points[:, :3])
        sdf_mm = self.field(world)
        unit = self.sdf_scale * self.frame.scale_mm
        if self.perturbation is None:
            feature = np.tanh(sdf_mm / unit).astype(np.float32)
            return np.concatenate([points[:, :3], feature[:, None]], axis=1)
        shifted = np.tanh((sdf_mm[None] + self.perturbation.offsets_mm(world)) / unit).astype(np.float32)
        xyz = np.broadcast_to(points[None, :, :3], (shifted.shape[0], *points[:, :3].shape))
        return np.concatenate([xyz, shifted[..., None]], axis=2)


@dataclass(frozen=True, eq=False)
class Case:
    """What the network needs from one observation, in the normalised frame."""

    frame: Frame
    encoder_input: np.ndarray  # [2, G, G, G] float32: mean label, observed fraction
    points: np.ndarray  # [N, 3 + point_features] float32 inputs at observed voxel centres inside the cube
    labels: np.ndarray  # [N] float32 0/1
    point_inputs: PointInputs
    unobserved_slices: tuple[int, ...] = ()  # empty slices between labelled ones, read as not annotated
    reading: SliceReading = SliceReading(None)  # the slice axis and the slices read as not annotated


def make_case(
    observation: Volume,
    config: ModelConfig,
    with_points: bool = True,
    *,
    empty_slices: str = "unobserved",
    annotation_axis: int | None = None,
    annotated_empty: tuple[int, ...] = (),
    frame: Frame | None = None,
) -> Case:
    """Frame the observation and splat its voxels into the 2-channel encoder grid.

    ``with_points=False`` skips the decoder inputs at observed voxels (pretraining needs none).
    ``empty_slices="unobserved"``: empty slices of the slice axis (the thick axis, or the annotation
    axis of a sparsely annotated fine grid: ``annotation_axis``, detected when None) between labelled
    slices are taken as not annotated (no labels there, not counted as observed, distances
    interpolated across), except ``annotated_empty`` ones; ``"background"`` takes them at their word.
    ``frame``: reuse a frame (a refinement keeps its case's frame) instead of framing the foreground.
    """
    check_empty_slices(empty_slices)
    grid_size = config.grid_size
    data = np.asarray(observation.data)
    reading = read_slices(data > 0, observation.spacing, empty_slices, annotation_axis, annotated_empty)
    frame = frame if frame is not None else frame_from_observation(observation, config.box_padding, reading)
    # Only voxels whose centre can fall in the cube: crop by the cube's index bounds first.
    corners = frame.to_world(np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)]))
    corner_index = observation.world_to_index(corners)
    lo = np.clip(np.floor(corner_index.min(0)).astype(int), 0, np.array(data.shape))
    hi = np.clip(np.ceil(corner_index.max(0)).astype(int) + 1, 0, np.array(data.shape))
    crop = data[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    index = np.indices(crop.shape).reshape(3, -1).T + lo
    points = frame.to_normalised(observation.index_to_world(index))
    labels = (crop.reshape(-1) > 0).astype(np.float32)
    inside = np.all(np.abs(points) < 0.5, axis=1)
    gaps = reading.gaps
    if len(gaps):
        inside &= ~np.isin(index[:, reading.axis], gaps)
    points, labels = points[inside].astype(np.float32), labels[inside]
    # Points in the frame's (world-aligned) order, not the storage order: the same geometry stored
    # with other axis orders or flips gives the same fine-tuning batches (frame invariance).
    rounded = np.round(points.astype(np.float64), 5)
    order = np.lexsort((rounded[:, 2], rounded[:, 1], rounded[:, 0]))
    points, labels = points[order], labels[order]
    cells = np.clip(((points + 0.5) * grid_size).astype(int), 0, grid_size - 1)
    flat = np.ravel_multi_index(cells.T, (grid_size,) * 3)
    count = np.bincount(flat, minlength=grid_size**3).astype(np.float32)
    total = np.bincount(flat, weights=labels, minlength=grid_size**3).astype(np.float32)
    occupancy = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    observed = (count > 0).astype(np.float32)
    encoder_input = np.stack([occupancy, observed]).reshape(2, grid_size, grid_size, grid_size)
    field = SliceDistanceField(observation, empty_slices, reading=reading) if config.point_features else None
    point_inputs = PointInputs(frame=frame, field=field, sdf_scale=config.sdf_scale)
    inputs = point_inputs(points) if with_points else np.zeros((0, 3 + config.point_features), np.float32)
    return Case(
        frame=frame,
        encoder_input=encoder_input,
        points=inputs,
        labels=labels,
        point_inputs=point_inputs,
        unobserved_slices=tuple(int(g) for g in gaps),
        reading=reading,
    )
