"""Scores of a reconstruction against a ground truth, beside the interpolation baselines.

Everything is computed on the ground truth's own grid: the fitted ensemble is queried at the
ground truth's voxel centres (no resampling of the output maps). By default the query is the
adaptive coarse-to-fine one, refined wherever the member variance exceeds ``SCORING_VARIANCE_TOL``
(stricter than for display, because AUROC ranks even tiny variances); its cost and its agreement
with the dense query are measured in docs/PERFORMANCE.md. ``adaptive=False`` queries every voxel.
"""

from __future__ import annotations

from collections.abc import Generator

import numpy as np

from ..config.progress import CancelFlag, Progress
from ..fitting.fitted import Fitted
from ..querying.maps import EnsembleMaps
from ..querying.predict import predict_grid_steps
from ..slices.baselines import BASELINES, interpolate_observation
from ..slices.contour_interpolation import SKIPPED, contour_available
from ..slices.slice_field import SliceReading
from ..volumes.volume import Volume
from .metrics import auroc, evaluate_probabilities, surface_band

SCORING_VARIANCE_TOL = 1e-5
SCORING_COARSE_STEP = 4  # coarse lattice step (voxels) of the adaptive query on the ground truth's grid


def score_maps(maps: EnsembleMaps, ground_truth: Volume, members: int, threshold: float = 0.5) -> dict[str, float]:
    """Metrics of ensemble maps already on the ground truth's grid.

    The uncertainty scored by ``auroc``/``overlap`` is the member variance (entropy for M = 1);
    ``auroc_entropy`` scores the predictive entropy for every method.
    """
    gt = np.asarray(ground_truth.data) > 0
    mean = maps.mean.data
    uncertainty = maps.variance.data if members > 1 else maps.entropy.data
    result = evaluate_probabilities(mean, gt, ground_truth.spacing, uncertainty=uncertainty, threshold=threshold)
    error = (mean >= threshold) != gt
    band = surface_band(gt, ground_truth.spacing)
    result["auroc_entropy"] = float(auroc(maps.entropy.data, error))
    result["auroc_entropy_band"] = float(auroc(maps.entropy.data[band], error[band]))
    return result


def score_baselines(
    observation: Volume,
    ground_truth: Volume,
    threshold: float = 0.5,
    *,
    empty_slices: str = "unobserved",
    reading: SliceReading | None = None,
) -> dict[str, dict[str, float]]:
    """Nearest, linear, shape-based and contour interpolation of the observation, scored on the GT grid.

    Contour interpolation needs the optional ITK package; without it its entry is ``{"skipped": why}``.
    ``reading``: the slices read as not annotated (a reconstruction's ``result.reading``); by default
    read from the observation as the baselines do."""
    gt = np.asarray(ground_truth.data) > 0
    scores = {}
    for method in BASELINES:
        if method == "contour" and not contour_available():
            scores[method] = {"skipped": SKIPPED}
            continue
        grid = (ground_truth.affine, ground_truth.shape)
        probs = interpolate_observation(observation, *grid, method, empty_slices=empty_slices, reading=reading)
        scores[method] = evaluate_probabilities(probs, gt, ground_truth.spacing, threshold=threshold)
    return scores


def compare_steps(
    fitted: Fitted,
    observation: Volume,
    ground_truth: Volume,
    *,
    threshold: float = 0.5,
    chunk: int | None = None,
    adaptive: bool = True,
    empty_slices: str = "unobserved",
    reading: SliceReading | None = None,
    cancel: CancelFlag | None = None,
) -> Generator[Progress, None, dict]:
    """{"method": metrics, "nearest": ..., "linear": ..., "shape_based": ...} on the GT grid.

    ``empty_slices`` is how the shape-based baseline reads gaps (as the reconstruction did).
    """
    maps = yield from predict_grid_steps(
        fitted,
        ground_truth.affine,
        ground_truth.shape,
        adaptive=adaptive,
        threshold=threshold,
        coarse_step=SCORING_COARSE_STEP,
        variance_tol=SCORING_VARIANCE_TOL,
        chunk=chunk,
        cancel=cancel,
    )
    result = {fitted.method: score_maps(maps, ground_truth, fitted.members, threshold)}
    result.update(score_baselines(observation, ground_truth, threshold, empty_slices=empty_slices, reading=reading))
    return result
