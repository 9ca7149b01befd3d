"""Grid queries of a fitted ensemble and the ensemble statistics.

:func:`predict_grid_steps` is the one entry point: every voxel centre of a grid (``adaptive=False``)
or coarse-to-fine (``adaptive=True``, core/adaptive). The points per network call are chosen here,
once (core/chunking.choose_chunk), and memory is bounded by the chunk, not the grid.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .budget import check_grid
from .chunking import autocast, choose_chunk, run_chunked
from .fitted import Fitted
from .progress import CancelFlag, Progress, check_cancel, drive
from .volume import Volume

EPS = 1e-6
MAP_NAMES = ("mean", "variance", "entropy", "mutual_information")


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of a Bernoulli with probability ``p``."""
    p = p.clamp(EPS, 1 - EPS)
    return -(p * torch.log(p) + (1 - p) * torch.log(1 - p))


def ensemble_statistics(probs: torch.Tensor) -> dict[str, torch.Tensor]:
    """[M, N] member probabilities -> mean, variance, predictive entropy, mutual information."""
    mean = probs.mean(0)
    variance = probs.var(0, unbiased=False)
    entropy = binary_entropy(mean)
    mutual_information = (entropy - binary_entropy(probs).mean(0)).clamp_min(0)
    return {"mean": mean, "variance": variance, "entropy": entropy, "mutual_information": mutual_information}


@dataclass(eq=False)
class EnsembleMaps:
    """Mean, variance, entropy and mutual information on one grid (each a Volume)."""

    mean: Volume
    variance: Volume
    entropy: Volume
    mutual_information: Volume
    members: np.ndarray | None = None  # [M, I, J, K] float16 when kept
    queries: int = 0  # network evaluations (points x members)

    def as_dict(self) -> dict[str, Volume]:
        return {name: getattr(self, name) for name in MAP_NAMES}


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


def predict_grid_steps(
    fitted: Fitted,
    affine: np.ndarray,
    shape: tuple[int, int, int],
    *,
    adaptive: bool = False,
    threshold: float = 0.5,
    coarse_step: int | None = None,
    variance_tol: float | None = None,
    chunk: int | None = None,
    keep_members: bool = False,
    precision: str = "fp32",
    cancel: CancelFlag | None = None,
) -> Generator[Progress, None, EnsembleMaps]:
    """Ensemble maps on the grid ``(affine, shape)``; yields Progress.

    ``adaptive``: coarse-to-fine (core/adaptive), refined near ``threshold`` and where the member
    variance exceeds ``variance_tol``; ``coarse_step`` None is chosen from the encoder's cell size
    (adaptive.coarse_step_for). Grids too small to gain are queried densely. ``chunk`` None:
    points per network call chosen for the device.
    """
    chunk = int(chunk) if chunk else default_chunk(fitted)
    check_grid(shape, fitted.members, keep_members=keep_members, chunk=chunk, hidden=fitted.decoder.config.hidden)
    common = dict(chunk=chunk, keep_members=keep_members, precision=precision, cancel=cancel)
    if adaptive:
        from . import adaptive as coarse_to_fine  # it builds on this module's queries

        step = coarse_to_fine.coarse_step_for(fitted, affine) if coarse_step is None else int(coarse_step)
        if coarse_to_fine.gains(step, shape):
            tol = coarse_to_fine.DEFAULT_VARIANCE_TOL if variance_tol is None else variance_tol
            return (
                yield from coarse_to_fine.adaptive_grid_steps(
                    fitted, affine, shape, threshold=threshold, coarse_step=step, variance_tol=tol, **common
                )
            )
    return (yield from dense_grid_steps(fitted, affine, shape, **common))


run_to_end = drive  # the older name, kept for callers
