"""Coarse-to-fine grid evaluation (Occupancy Networks' multiresolution isosurface extraction, one level).

1. Query a coarse sub-lattice: every ``coarse_step``-th voxel along each axis, plus the last one.
2. Mark the coarse cells (8 lattice corners each) whose corner means reach into the band
   ``[threshold - band, threshold + band]`` (the surface, or a slider position near it, may pass
   through) or whose corner variance exceeds ``variance_tol``; dilate the mark by one cell.
3. Query every voxel of the marked cells (their closed boxes, so shared faces are exact too).
4. Fill all other voxels by trilinear interpolation of the coarse corners (mean, variance,
   entropy, mutual information, and per-member probabilities when kept).

Guarantee: a voxel that was queried (lattice corners and marked cells) has exactly the dense
result, in all four maps; the rest lie in cells whose 8 corners are all far from the threshold
band and have negligible variance, and hold the interpolation of those corners. A feature
smaller than a coarse cell that no lattice corner sees (and whose neighbourhood shows no
variance) can be missed: keep ``coarse_step`` below the thinnest structure, in voxels.

Work is done slab by slab (``coarse_step`` voxels thick along the first axis): memory beyond the
output maps is bounded by one slab plus one chunk of queries, not by the grid.
"""

from __future__ import annotations

from collections.abc import Generator

import numpy as np
from scipy import ndimage

from ..config.progress import CancelFlag, Progress, check_cancel
from ..fitting.fitted import Fitted
from ..volumes.volume import Volume
from .dense import query_voxels
from .maps import MAP_NAMES, EnsembleMaps

DEFAULT_BAND = 0.45  # refine where corner means reach [threshold - band, threshold + band]
DEFAULT_VARIANCE_TOL = 1e-3  # refine where a corner's member variance exceeds this


def lattice(n: int, step: int) -> np.ndarray:
    """Every ``step``-th index of ``range(n)`` and the last one."""
    index = np.arange(0, n, step)
    return index if index[-1] == n - 1 else np.append(index, n - 1)


class _Axis:
    """Interpolation and cell membership of the fine voxels along one axis."""

    def __init__(self, n: int, step: int) -> None:
        self.nodes = lattice(n, step)
        cells = len(self.nodes) - 1
        fine = np.arange(n)
        cell = np.clip(np.searchsorted(self.nodes, fine, side="right") - 1, 0, cells - 1)
        self.cell = cell  # the cell whose closed interval holds the voxel (the higher one on a node)
        self.weight = ((fine - self.nodes[cell]) / (self.nodes[cell + 1] - self.nodes[cell])).astype(np.float32)
        on_node = np.zeros(n, dtype=bool)
        on_node[self.nodes] = True
        self.on_node = on_node
        self.other = np.where(on_node & (cell > 0) & (fine == self.nodes[cell]), cell - 1, cell)  # shared face

    def interpolate(self, values: np.ndarray, axis: int, select: slice = slice(None)) -> np.ndarray:
        """Linear interpolation of node ``values`` along ``axis`` at the fine voxels ``select``."""
        cell, weight = self.cell[select], self.weight[select]
        shape = [1] * values.ndim
        shape[axis] = len(cell)
        weight = weight.reshape(shape)
        lo = np.take(values, cell, axis=axis)
        hi = np.take(values, cell + 1, axis=axis)
        return lo * (1 - weight) + hi * weight  # exact at both ends (weight 0 or 1): lattice values stay as queried


def _corner_reduce(values: np.ndarray, op) -> np.ndarray:
    """min/max over the 8 corners of every cell of a [X, Y, Z] lattice -> [X-1, Y-1, Z-1]."""
    x, y, z = values.shape
    out = values[:-1, :-1, :-1]
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                if dx or dy or dz:
                    out = op(out, values[dx : x - 1 + dx, dy : y - 1 + dy, dz : z - 1 + dz])
    return out


def coarse_step_for(fitted: Fitted, affine: np.ndarray, largest: int = 4) -> int:
    """Coarse step (voxels) so that one coarse cell spans at most one encoder cell (the scale at
    which the network's features vary), capped at ``largest``; 1 means "query every voxel".

    At the default output (the observation's finest spacing, about 1 mm) this is 4; on a coarse
    output grid (voxels over half an encoder cell) it is 1, because a coarse lattice there could
    step over thin structures.
    """
    voxel_mm = float(np.linalg.norm(np.asarray(affine)[:3, :3], axis=0).min())
    cell_mm = fitted.frame.scale_mm / fitted.feature_grids.shape[-1]
    return int(np.clip(np.floor(cell_mm / voxel_mm + 1e-6), 1, largest))


def gains(coarse_step: int, shape: tuple[int, ...]) -> bool:
    """Whether a coarse lattice of ``coarse_step`` saves queries on ``shape`` (else query densely)."""
    return coarse_step >= 2 and min(int(n) for n in shape) >= 2 * coarse_step + 1


def _cells(axis: _Axis, select: slice = slice(None)) -> list[np.ndarray]:
    """Cell indices of the voxels ``select``: the cell holding each, and (if different) the one
    sharing its face, so a voxel on a face between a marked and an unmarked cell is refined."""
    cell, other = axis.cell[select], axis.other[select]
    return [cell] if np.array_equal(cell, other) else [cell, other]


def mark_cells(
    mean: np.ndarray, variance: np.ndarray, threshold: float, band: float, variance_tol: float
) -> np.ndarray:
    """Cells to refine, from the lattice maps [X, Y, Z] -> bool [X-1, Y-1, Z-1] (dilated by one cell)."""
    lo, hi = threshold - band, threshold + band
    marked = (_corner_reduce(mean, np.maximum) >= lo) & (_corner_reduce(mean, np.minimum) <= hi)
    marked |= _corner_reduce(variance, np.maximum) > variance_tol
    return ndimage.binary_dilation(marked, structure=np.ones((3, 3, 3), dtype=bool))


def adaptive_grid_steps(
    fitted: Fitted,
    affine: np.ndarray,
    shape: tuple[int, int, int],
    *,
    threshold: float,
    coarse_step: int,
    chunk: int,
    variance_tol: float = DEFAULT_VARIANCE_TOL,
    band: float = DEFAULT_BAND,
    keep_members: bool = False,
    precision: str = "fp32",
    cancel: CancelFlag | None = None,
) -> Generator[Progress, None, EnsembleMaps]:
    """The coarse-to-fine query (called by :func:`predict.predict_grid_steps` with ``adaptive=True``,
    when :func:`gains` says the grid is large enough); same result type and frame as the dense one.

    ``queries`` of the result counts the point x member evaluations actually made (points outside
    the unit cube are not queried).
    """
    shape = tuple(int(s) for s in shape)
    step = int(coarse_step)
    axes = [_Axis(n, step) for n in shape]
    nx, ny, nz = shape
    members = fitted.members
    total = nx * ny * nz
    slabs = len(axes[0].nodes) - 1
    coarse_shape = tuple(len(a.nodes) for a in axes)
    coarse_total = int(np.prod(coarse_shape))
    progress_total = -(-coarse_total // chunk) + slabs
    done = 0
    queries = 0

    # 1. the coarse lattice
    lattice_index = np.ravel_multi_index(np.meshgrid(*[a.nodes for a in axes], indexing="ij"), shape).reshape(-1)
    coarse = {name: np.zeros(coarse_total, dtype=np.float32) for name in MAP_NAMES}
    coarse_members = np.zeros((members, coarse_total), dtype=np.float32) if keep_members else None
    for start, stop, (stats, probs, inside) in query_voxels(
        fitted, affine, shape, lattice_index, chunk, precision=precision
    ):
        check_cancel(cancel)
        for name in MAP_NAMES:
            coarse[name][start:stop] = stats[name]
        if coarse_members is not None:
            coarse_members[:, start:stop] = probs
        queries += inside * members
        done += 1
        yield Progress("predict", done, progress_total, message="coarse grid")
    coarse = {name: values.reshape(coarse_shape) for name, values in coarse.items()}
    if coarse_members is not None:
        coarse_members = coarse_members.reshape(members, *coarse_shape)
    marked = mark_cells(coarse["mean"], coarse["variance"], threshold, band, variance_tol)

    # 2. interpolate everywhere, slab by slab, then query the marked cells' voxels
    maps = {name: np.empty(total, dtype=np.float32) for name in MAP_NAMES}
    member_maps = np.empty((members, total), dtype=np.float16) if keep_members else None
    pending: list[np.ndarray] = []
    pending_count = 0
    plane = ny * nz
    node_yz = axes[1].on_node[:, None] & axes[2].on_node[None, :]
    ay, az = axes[1], axes[2]

    def flush(everything: bool) -> int:
        """Query the pending voxels (whole chunks, or all); return how many were inside the cube."""
        nonlocal pending, pending_count
        if not pending_count or (not everything and pending_count < chunk):
            return 0
        index = np.concatenate(pending)
        take = len(index) if everything else (len(index) // chunk) * chunk
        rest = index[take:]
        count = 0
        for start, stop, (stats, probs, inside) in query_voxels(
            fitted, affine, shape, index[:take], chunk, precision=precision
        ):
            check_cancel(cancel)
            where = index[start:stop]
            for name in MAP_NAMES:
                maps[name][where] = stats[name]
            if member_maps is not None:
                member_maps[:, where] = probs
            count += inside
        pending, pending_count = ([rest], len(rest)) if len(rest) else ([], 0)
        return count

    ax = axes[0]
    for s in range(slabs):
        check_cancel(cancel)
        x0 = int(ax.nodes[s])
        x1 = int(ax.nodes[s + 1]) + (1 if s == slabs - 1 else 0)  # half-open slabs; the last one closed
        select = slice(x0, x1)
        flat = slice(x0 * plane, x1 * plane)
        for name in MAP_NAMES:
            values = ay.interpolate(ax.interpolate(coarse[name], 0, select), 1)
            maps[name][flat] = az.interpolate(values, 2).reshape(-1)
        if member_maps is not None:
            values = ay.interpolate(ax.interpolate(coarse_members, 1, select), 2)
            member_maps[:, flat] = az.interpolate(values, 3).reshape(members, -1)
        refine = np.zeros((x1 - x0, ny, nz), dtype=bool)
        for cx in _cells(ax, select):
            for cy in _cells(ay):
                for cz in _cells(az):
                    refine |= marked[np.ix_(cx, cy, cz)]
        refine[ax.on_node[select]] &= ~node_yz  # lattice corners are already exact
        index = np.flatnonzero(refine)
        if len(index):
            pending.append(index + x0 * plane)
            pending_count += len(index)
        queries += flush(False) * members
        done += 1
        yield Progress("predict", done, progress_total, message="refining near the surface")
    queries += flush(True) * members

    volumes = {name: Volume(values.reshape(shape), affine) for name, values in maps.items()}
    member_grid = member_maps.reshape(members, *shape) if member_maps is not None else None
    return EnsembleMaps(**volumes, members=member_grid, queries=int(queries))
