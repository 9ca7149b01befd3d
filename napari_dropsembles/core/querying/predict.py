"""The one grid query: dense or coarse-to-fine, the chunk chosen here, once; the default output grid."""

from __future__ import annotations

from collections.abc import Generator

import numpy as np

from ..config.budget import check_grid
from ..config.progress import CancelFlag, Progress
from ..fitting.fitted import Fitted
from ..volumes.volume import Volume
from . import adaptive as coarse_to_fine
from .dense import default_chunk, dense_grid_steps
from .maps import EnsembleMaps

__all__ = [
    "output_grid",
]


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
        step = coarse_to_fine.coarse_step_for(fitted, affine) if coarse_step is None else int(coarse_step)
        if coarse_to_fine.gains(step, shape):
            tol = coarse_to_fine.DEFAULT_VARIANCE_TOL if variance_tol is None else variance_tol
            return (
                yield from coarse_to_fine.adaptive_grid_steps(
                    fitted, affine, shape, threshold=threshold, coarse_step=step, variance_tol=tol, **common
                )
            )
    return (yield from dense_grid_steps(fitted, affine, shape, **common))


def output_grid(fitted: Fitted, observation: Volume, resolution_mm: float | None) -> tuple[np.ndarray, tuple]:
    """The default grid: the observation's own (thick axis refined to the in-plane spacing), over the
    reconstruction box; with ``resolution_mm``, an isotropic grid of that spacing over the box."""
    if resolution_mm:
        return fitted.frame.box_affine(float(resolution_mm))
    return fitted.frame.aligned_grid(observation)
