"""Plain interpolation baselines: what a user would do with an observation without a learned prior.

All of them resample the observation onto any target grid through world coordinates, so the
observation and target may have different spacings, origins and orientations.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..config.errors import InputError
from ..volumes.volume import Volume
from .contour_interpolation import SKIPPED, contour_available, contour_interpolate
from .slice_field import SliceDistanceField, SliceReading, fill_unannotated, read_slices

BASELINES = ("nearest", "linear", "shape_based", "contour")  # contour: ITK, optional (contour_available)

_CHUNK_VOXELS = 1 << 20  # target voxels per chunk (bounded memory for 256^3 and beyond)


def _target_chunks(index_map: np.ndarray, target_shape: tuple[int, int, int]):
    """Yield (slice along axis 0, (3, n) fractional observation indices) for the target grid."""
    ni, nj, nk = target_shape
    rows = max(1, _CHUNK_VOXELS // max(1, nj * nk))
    jj, kk = np.meshgrid(np.arange(nj, dtype=np.float64), np.arange(nk, dtype=np.float64), indexing="ij")
    jj, kk = jj.ravel(), kk.ravel()
    rot, shift = index_map[:3, :3], index_map[:3, 3]
    for start in range(0, ni, rows):
        stop = min(ni, start + rows)
        ii = np.arange(start, stop, dtype=np.float64)
        idx = np.empty((3, stop - start, jj.size))
        for a in range(3):
            idx[a] = rot[a, 0] * ii[:, None] + (rot[a, 1] * jj + rot[a, 2] * kk + shift[a])[None, :]
        yield slice(start, stop), idx.reshape(3, -1)


def interpolate_observation(
    observation: Volume,
    target_affine: np.ndarray,
    target_shape: tuple[int, int, int],
    method: str,
    *,
    empty_slices: str = "unobserved",
    reading: SliceReading | None = None,
) -> np.ndarray:
    """Foreground probability (float32, ``target_shape``) of the observation on a target grid.

    - ``nearest``: value of the nearest observation voxel; 0 outside the observation grid.
    - ``linear``: trilinear interpolation; the grid is extended with 0 outside.
    - ``contour``: ITK's morphological contour interpolation (what 3D Slicer's "Fill between slices"
      does), 0/1; needs the optional ITK package (:func:`~.contour_interpolation.contour_available`).
    - ``shape_based``: 2D signed distances (mm) of each slice along the observation's thickest
      axis, trilinearly interpolated (0/1 observation thresholded at 0.5; an empty layer is
      assumed one voxel beyond the grid, 0 further out), probability ``sigmoid(-sdf / min(spacing))``;
      empty slices between labelled ones are skipped unless ``empty_slices="background"``.

    Slices read as not annotated (``reading``, by default :func:`~.slice_field.read_slices`: gaps of
    the thick axis or of a detected annotation axis) are filled from the nearest annotated slices
    along that axis before ``nearest`` and ``linear`` interpolate, so every baseline reads them alike.
    """
    if method not in BASELINES:
        raise InputError(f"unknown baseline {method!r}; choose one of {', '.join(BASELINES)}")
    target_affine = np.asarray(target_affine, dtype=float)
    if target_affine.shape != (4, 4):
        raise InputError(f"target affine must be 4x4, got shape {target_affine.shape}")
    target_shape = tuple(int(s) for s in target_shape)
    if len(target_shape) != 3 or min(target_shape) < 1:
        raise InputError(f"target shape must be 3 positive sizes, got {target_shape}")
    index_map = np.linalg.inv(observation.affine) @ target_affine
    obs = np.asarray(observation.data)
    if reading is None:
        reading = read_slices(obs > 0.5, observation.spacing, empty_slices)
    shape = np.array(obs.shape)
    out = np.zeros(target_shape, dtype=np.float32)
    tail = target_shape[1:]

    if method == "contour":
        if not contour_available():
            raise InputError(f"the contour baseline is {SKIPPED}")
        return contour_interpolate(observation, target_affine, target_shape, reading)
    if method == "nearest":
        src = fill_unannotated(observation, reading, nearest=True)
        for rows, idx in _target_chunks(index_map, target_shape):
            near = np.floor(idx + 0.5).astype(np.int64)
            inside = np.all((near >= 0) & (near < shape[:, None]), axis=0)
            vals = np.zeros(idx.shape[1], dtype=np.float32)
            vals[inside] = src[near[0, inside], near[1, inside], near[2, inside]]
            out[rows] = vals.reshape((-1, *tail))
    elif method == "linear":
        src = fill_unannotated(observation, reading)
        for rows, idx in _target_chunks(index_map, target_shape):
            vals = ndimage.map_coordinates(src, idx, order=1, mode="constant", cval=0.0)
            out[rows] = vals.reshape((-1, *tail))
    else:
        field = SliceDistanceField(observation, empty_slices, reading=reading)
        scale = float(observation.spacing.min())
        for rows, idx in _target_chunks(index_map, target_shape):
            d = field.at_index(idx)
            prob = 1.0 / (1.0 + np.exp(np.clip(d / scale, -60.0, 60.0)))
            beyond = np.any((idx < -1.0) | (idx > shape[:, None]), axis=0)  # past the empty layer
            prob[beyond] = 0.0
            out[rows] = prob.reshape((-1, *tail)).astype(np.float32)
    return out
