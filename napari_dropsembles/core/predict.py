"""Chunked grid queries (memory bounded by the chunk, not the grid) and ensemble statistics."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .chunking import autocast, choose_chunk, run_chunked
from .methods import Fitted
from .progress import CancelFlag, Progress, check_cancel
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


def dense_chunk_default(fitted: Fitted) -> int:
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


def predict_grid_steps(
    fitted: Fitted,
    affine: np.ndarray,
    shape: tuple[int, int, int],
    *,
    chunk: int | None = 65536,
    keep_members: bool = False,
    precision: str = "fp32",
    cancel: CancelFlag | None = None,
) -> Generator[Progress, None, EnsembleMaps]:
    """Query every voxel centre of the grid; yields Progress per chunk.

    ``chunk`` None: chosen for the device (chunking.choose_chunk). ``queries`` counts the point x
    member evaluations made (voxels outside the case's unit cube are not queried).
    """
    total = int(np.prod(shape))
    chunk = int(chunk) if chunk else dense_chunk_default(fitted)
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


def run_to_end(steps: Generator) -> object:
    """Drain a progress generator and return its result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value
