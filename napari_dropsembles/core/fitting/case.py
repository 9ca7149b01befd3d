"""The case of one observation: what the networks need from it, in its normalised frame.

:func:`make_case` frames the observation (core/volumes/frame), splats its voxels into the 2-channel
encoder grid and turns the observed voxels into decoder inputs (xyz and the shape-based interpolation
of core/slices). Pretraining and reconstruction both go through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import ndimage

from ..config.configs import ModelConfig
from ..networks.calibration import interpolation_features
from ..slices.neighbours import neighbour_slices
from ..slices.slice_field import (
    SliceDistanceField,
    SliceReading,
    check_empty_slices,
    fill_unannotated,
    read_slices,
)
from ..slices.slice_uncertainty import MemberPerturbation
from ..volumes.frame import Frame, frame_from_observation
from ..volumes.volume import Volume


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

    def calibration_features(self, points: np.ndarray) -> np.ndarray:
        """The calibration head's interpolation inputs [N, F] at normalised points."""
        assert self.field is not None, "calibration needs the shape-based interpolation (point_features 1)"
        world = self.frame.to_world(np.asarray(points, dtype=np.float64)[:, :3])
        return interpolation_features(neighbour_slices(self.field, world), self.field(world), self._linear(world))

    @cached_property
    def _filled_observation(self) -> np.ndarray:
        """The observation with its slices read as not annotated filled in (what linear interpolation reads)."""
        assert self.field is not None
        return fill_unannotated(self.field.observation, self.field.reading)

    def _linear(self, world: np.ndarray) -> np.ndarray:
        """Linear interpolation of the observation at world points (0 outside its grid)."""
        assert self.field is not None
        inverse = self.field._inverse
        index = (world @ inverse[:3, :3].T + inverse[:3, 3]).T
        return ndimage.map_coordinates(self._filled_observation, index, order=1, mode="constant", cval=0.0)


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
