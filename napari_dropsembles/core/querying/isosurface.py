"""Surface meshes in world mm: marching cubes on a grid, per-vertex values, PLY/OBJ/STL IO."""

from __future__ import annotations

import numpy as np

from ..volumes.mesh import Mesh, _empty_mesh
from ..volumes.volume import Volume


def sample_volume(values: Volume, points_mm: np.ndarray) -> np.ndarray:
    """Trilinear sample of ``values`` at world points (nearest edge value outside the grid)."""
    from scipy.ndimage import map_coordinates  # scipy.ndimage: slow to import, loaded when first used

    index = values.world_to_index(np.asarray(points_mm, dtype=float).reshape(-1, 3))
    return map_coordinates(np.asarray(values.data, dtype=np.float32), index.T, order=1, mode="nearest")


class IsoSurface:
    """Marching cubes of one grid, prepared once so that each new threshold pays only for the cubes.

    Preparation (done here, not per threshold): the grid is padded by one voxel of its lowest
    value, so that surfaces touching the border are closed; non-finite voxels take that value;
    the winding that makes normals point outward is fixed from the affine (scikit-image winds
    faces towards increasing values, so outward for an object with high values needs a flip
    unless the affine mirrors the grid). ``values`` (any grid; resampled by world coordinates
    when it differs) gives ``vertex_values``: on the same grid each vertex lies on one grid edge,
    so its value is the linear interpolation of that edge's two end values.

    Marching cubes scans every cell of the grid (an empty 128^3 grid costs about as much as a
    full one), so each threshold runs only on the box of the cells whose value range contains
    it: the value range of every ``BRICK``^3 block is computed once here, and the box of the
    blocks that straddle the threshold is the same mesh at a fraction of the cost.
    """

    BRICK = 8

    def __init__(self, volume: Volume, values: Volume | None = None) -> None:
        self.volume = volume
        self.values = values
        data = np.asarray(volume.data, dtype=np.float32)
        finite = np.isfinite(data)
        self._empty = not finite.any()
        if self._empty:
            return
        all_finite = bool(finite.all())
        self.low = float(data.min() if all_finite else data[finite].min())
        self.high = float(data.max() if all_finite else data[finite].max())
        if not all_finite:
            data = np.where(finite, data, self.low)
        self._padded = np.pad(data, 1, mode="constant", constant_values=self.low)
        self._block_low, self._block_high = _block_ranges(self._padded, self.BRICK)
        self._flip = float(np.linalg.det(np.asarray(volume.affine, dtype=float)[:3, :3])) > 0
        self._edge_values: np.ndarray | None = None  # the values on the padded grid, when on the same grid
        if values is not None and values.shape == volume.shape and np.allclose(values.affine, volume.affine, atol=1e-6):
            self._edge_values = np.pad(np.asarray(values.data, dtype=np.float32), 1, mode="edge").ravel()

    def extract(self, threshold: float = 0.5, *, step_size: int = 1) -> Mesh:
        """The mesh at ``threshold`` (empty when the level is outside the data range)."""
        from skimage.measure import marching_cubes  # scikit-image: slow to import, loaded when first used

        with_values = self.values is not None
        threshold = float(threshold)
        if self._empty or not (self.low < threshold < self.high):
            return _empty_mesh(with_values)
        step = max(1, int(step_size))
        box = self._active_box(threshold, step)
        if box is None:
            return _empty_mesh(with_values)
        try:
            verts, faces, _normals, _vals = marching_cubes(
                self._padded[box], level=threshold, step_size=step, allow_degenerate=False
            )
        except (ValueError, RuntimeError):
            return _empty_mesh(with_values)
        if len(faces) == 0:
            return _empty_mesh(with_values)
        if self._flip:
            faces = faces[:, ::-1]
        verts += np.array([sl.start for sl in box], dtype=verts.dtype)
        vertices_mm = self.volume.index_to_world(verts.astype(np.float64) - 1.0)
        vertex_values = None
        if with_values:
            if self._edge_values is not None and step == 1:
                vertex_values = self._edge_interpolate(verts)
            else:
                vertex_values = sample_volume(self.values, vertices_mm)
        return Mesh(vertices_mm, faces, vertex_values)

    def _active_box(self, threshold: float, step: int) -> tuple[slice, ...] | None:
        """Slices of the padded grid holding every cell (of ``step`` voxels) that the level crosses."""
        shape = self._padded.shape
        if step > self.BRICK:
            return tuple(slice(0, n) for n in shape)
        active = (self._block_low <= threshold) & (self._block_high >= threshold)
        if not active.any():
            return None
        box = []
        for axis, n in enumerate(shape):
            hit = np.flatnonzero(active.any(axis=tuple(a for a in range(3) if a != axis)))
            start = (int(hit[0]) * self.BRICK // step) * step  # on the full grid's lattice of step
            stop = min((int(hit[-1]) + 1) * self.BRICK + step, n)
            box.append(slice(start, stop))
        return tuple(box)

    def _edge_interpolate(self, verts: np.ndarray) -> np.ndarray:
        """Values at marching-cubes vertices (padded index space), each on one unit grid edge."""
        strides = np.array(self._padded.strides, dtype=np.int64) // self._padded.itemsize
        base = verts.astype(np.int64)  # floor: padded coordinates are >= 0
        frac = (verts - base).astype(np.float32)
        flat = base @ strides
        # vertices on the padded grid's last plane have no next voxel; their fraction is 0
        shift = ((frac > 0) @ strides).astype(np.int64)
        a = self._edge_values[flat]
        b = self._edge_values[flat + shift]
        return a + (b - a) * frac.sum(axis=1)


def _block_ranges(data: np.ndarray, brick: int) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) over each block of ``brick``^3 voxels together with its next block on every axis.

    A cell whose lower corner lies in block k has its corners in blocks k and k + 1 of each axis,
    so it can cross a level only where that level lies in block k's range here.
    """
    blocks = [-(-n // brick) for n in data.shape]
    full = np.pad(data, [(0, b * brick - n) for b, n in zip(blocks, data.shape, strict=True)], mode="edge")
    low, high = full, full
    for axis in range(3):  # one axis at a time: about 9x faster than one 6-D reduction (130^3: 3.5 vs 30 ms)
        shape = blocks[:axis] + [blocks[axis], brick] + list(full.shape[axis + 1 :])
        low, high = low.reshape(shape).min(axis=axis + 1), high.reshape(shape).max(axis=axis + 1)
    for axis in range(3):
        head = [slice(None)] * 3
        tail = [slice(None)] * 3
        head[axis], tail[axis] = slice(0, -1), slice(1, None)
        low[tuple(head)] = np.minimum(low[tuple(head)], low[tuple(tail)])
        high[tuple(head)] = np.maximum(high[tuple(head)], high[tuple(tail)])
    return low, high


def extract_mesh(volume: Volume, threshold: float = 0.5, values: Volume | None = None, *, step_size: int = 1) -> Mesh:
    """Marching cubes of ``volume`` at ``threshold``; vertices in world mm, normals outward.

    One-off form of :class:`IsoSurface` (keep one of those to extract many thresholds).
    """
    return IsoSurface(volume, values).extract(threshold, step_size=step_size)
