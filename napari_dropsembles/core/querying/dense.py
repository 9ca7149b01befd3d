"""Grid queries of a fitted ensemble and the ensemble statistics.

:func:`predict_grid_steps` is the one entry point: every voxel centre of a grid (``adaptive=False``)
or coarse-to-fine (``adaptive=True``, core/adaptive). The points per network call are chosen here,
once (core/chunking.choose_chunk), and memory is bounded by the chunk, not the grid.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator

import numpy as np
import torch

from ..config.progress import CancelFlag, Progress, check_cancel, drive
from ..fitting.fitted import Fitted
from ..networks.chunking import autocast, choose_chunk, run_chunked
from ..volumes.volume import Volume
from .maps import MAP_NAMES, EnsembleMaps, ensemble_statistics


def grid_points_mm(affine: np.ndarray, shape: tuple[int, int, int], start: int, stop: int) -> np.ndarray:
    """World mm of the voxel centres with flat (C-order) indices in [start, stop)."""
    index = np.stack(np.unravel_index(np.arange(start, stop), shape), axis=1).astype(np.float64)
    return index @ affine[:3, :3].T + affine[:3, 3]


def default_chunk(fitted: Fitted) -> int:
    """Points per network call when the caller gives none: measured per device (core/chunking)."""
    return choose_chunk(fitted.device, fitted.members, fitted.decoder.config.hidden)


def query_voxels(
    fitted: Fitted,
    affine: np.ndarray,
    shape: tuple[int, int, int],
    flat_index: np.ndarray | range,
    chunk: int,
    *,
    precision: str = "fp32",
) -> Iterator[tuple[int, int, tuple[dict[str, np.ndarray], np.ndarray, int]]]:
    """Query the voxels ``flat_index`` (C order in ``shape``) chunk by chunk.

    Yields ``(start, stop, (statistics, member probabilities [M, n], points inside the cube))``
    for ``flat_index[start:stop]``. On an out-of-memory error the chunk is halved (chunking.run_chunked).
    """

    def run(start: int, stop: int):
        index = np.stack(np.unravel_index(np.asarray(flat_index[start:stop]), shape), axis=1).astype(np.float64)
        points = fitted.frame.to_normalised(index @ affine[:3, :3].T + affine[:3, 3])
        points = torch.from_numpy(points.astype(np.float32)).to(fitted.device)
        inside = int((points.abs() < 0.5).all(-1).sum())  # predict_normalised queries only these
        with autocast(fitted.device, precision):
            probs = fitted.predict_normalised(points).float()
        stats = {name: value.cpu().numpy() for name, value in ensemble_statistics(probs).items()}
        return stats, probs.cpu().numpy(), inside

    yield from run_chunked(run, len(flat_index), chunk)


def dense_grid_steps(
    fitted: Fitted,
    affine: np.ndarray,
    shape: tuple[int, int, int],
    *,
    chunk: int,
    keep_members: bool = False,
    precision: str = "fp32",
    cancel: CancelFlag | None = None,
) -> Generator[Progress, None, EnsembleMaps]:
    """Query every voxel centre of the grid, ``chunk`` points per call; yields Progress per chunk.

    ``queries`` counts the point x member evaluations made (voxels outside the case's unit cube
    are not queried).
    """
    total = int(np.prod(shape))
    maps = {name: np.zeros(total, dtype=np.float32) for name in MAP_NAMES}
    members = np.zeros((fitted.members, total), dtype=np.float16) if keep_members else None
    chunks = (total + chunk - 1) // chunk
    queries = 0
    voxels = range(total)  # sliced per chunk: no index array of the whole grid
    for start, stop, (stats, probs, inside) in query_voxels(fitted, affine, shape, voxels, chunk, precision=precision):
        check_cancel(cancel)
        for name, value in stats.items():
            maps[name][start:stop] = value
        if members is not None:
            members[:, start:stop] = probs
        queries += inside * fitted.members
        yield Progress("predict", min(chunks, -(-stop // chunk)), chunks)
    volumes = {name: Volume(values.reshape(shape), affine) for name, values in maps.items()}
    member_grid = members.reshape(fitted.members, *shape) if members is not None else None
    return EnsembleMaps(**volumes, members=member_grid, queries=queries)


run_to_end = drive  # the older name, kept for callers
