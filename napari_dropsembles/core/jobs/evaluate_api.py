"""The evaluate job, one call from a request to its outputs: a prediction against a ground truth.

The prediction is a result folder (its maps must lie on the ground truth's grid: ``reconstruct --like``
or ``--ground-truth`` put them there) or a map of foreground probabilities in hand (a layer), which is
resampled onto the ground truth's grid. The ground truth is a mask or a label map (every label is the
object) or, holding other values, the voxels >= 0.5.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config.errors import InputError
from ..config.progress import CancelFlag, Progress, check_cancel, drive
from ..io.atomic import atomic_write_bytes
from ..io.output_paths import check_output_path
from ..querying.isosurface import sample_volume
from ..results.folder import read_reconstruction
from ..results.structures import StructureSet
from ..scoring.evaluate import score_maps
from ..scoring.metrics import dice, evaluate_probabilities, reliability_curve, surface_band
from ..volumes.input_kind import whole_numbers
from ..volumes.masks import binary_mask_from_volume, list_labels
from ..volumes.volume import Volume
from .inputs import PathLike, as_volume


@dataclass(frozen=True, eq=False)
class EvaluateRequest:
    prediction: Volume | PathLike  # a result folder, or foreground probabilities (the mean occupancy)
    ground_truth: Volume | PathLike  # a mask or a label map
    uncertainty: Volume | None = None  # with probabilities in hand: the uncertainty scored (None: their entropy)
    threshold: float = 0.5  # the decision level on the probabilities
    out: PathLike | None = None  # write the metrics as JSON here


@dataclass(eq=False)
class EvaluateOutput:
    metrics: dict[str, float]
    curve: dict  # reliability over every voxel of the ground truth's grid
    curve_band: dict  # reliability within 2 voxels of the true surface
    voxels: int
    resampled: bool  # the prediction was resampled onto the ground truth's grid
    path: Path | None = None  # the metrics JSON written


def ground_truth_mask(truth: Volume) -> Volume:
    """The object of a ground truth: every label of a mask or label map, else the voxels >= 0.5."""
    if whole_numbers(np.asarray(truth.data)):
        return binary_mask_from_volume(truth, label="all")
    return binary_mask_from_volume(truth, threshold=0.5)


def resample_onto(source: Volume, target: Volume, slab: int = 16) -> tuple[np.ndarray, bool]:
    """``source`` on ``target``'s grid (trilinear in world mm, by slabs); unchanged when the grids agree."""
    if source.shape == target.shape and np.allclose(source.affine, target.affine, atol=1e-5):
        return np.asarray(source.data, np.float64), False
    out = np.empty(target.shape, np.float32)
    rest = np.indices(target.shape[1:]).reshape(2, -1).T
    for start in range(0, target.shape[0], slab):
        rows = np.arange(start, min(start + slab, target.shape[0]))
        index = np.concatenate([np.repeat(rows, len(rest))[:, None], np.tile(rest, (len(rows), 1))], axis=1)
        out[rows] = sample_volume(source, target.index_to_world(index)).reshape(len(rows), *target.shape[1:])
    return out.astype(np.float64), True


def ground_truth_dice(structures: StructureSet, truth: Volume | None, threshold: float) -> float | None:
    """Dice of the thresholded mean against a ground truth (resampled onto its grid); None without one.

    Structures read per label: the mean of each one's Dice against its label of the ground truth, when
    the ground truth holds every label; otherwise the merged mean against the ground truth's object."""
    if truth is None:
        return None
    labelled = whole_numbers(np.asarray(truth.data))
    if structures.split and labelled and set(structures.results) <= set(list_labels(truth)):
        scores = []
        for label, part in sorted(structures.results.items()):
            probs, _ = resample_onto(part.maps.mean, truth)
            truth_mask = np.asarray(binary_mask_from_volume(truth, label=label).data) > 0
            scores.append(float(dice(probs >= threshold, truth_mask)))
        return float(np.mean(scores))
    probs, _ = resample_onto(structures.mean, truth)
    return float(dice(probs >= threshold, np.asarray(ground_truth_mask(truth).data) > 0))


def _folder_scores(folder: PathLike, gt: Volume, threshold: float) -> tuple[dict, np.ndarray]:
    """The scores of a result folder whose maps lie on the ground truth's grid."""
    saved = read_reconstruction(folder)
    maps = saved.maps()
    if maps.mean.shape != gt.shape or not (abs(maps.mean.affine - gt.affine) < 1e-4).all():
        raise InputError(
            "the prediction is not on the ground truth's grid; run reconstruct with --like GT (or --ground-truth GT)"
        )
    return score_maps(maps, gt, saved.members, threshold), np.asarray(maps.mean.data, np.float64)


def evaluate_job_steps(
    request: EvaluateRequest, cancel: CancelFlag | None = None
) -> Generator[Progress, None, EvaluateOutput]:
    """Run the job; yields Progress; returns the metrics and the reliability curves (one-line errors)."""
    out = None
    if request.out is not None:
        inputs: dict[str, Path | None] = {}
        if not isinstance(request.ground_truth, Volume):
            inputs["ground truth"] = Path(request.ground_truth)
        if not isinstance(request.prediction, Volume):
            folder = Path(request.prediction)
            inputs["prediction folder"] = folder
            inputs.update({f"map {p.name}": p for p in folder.glob("*") if p.is_file()})
        out = check_output_path(request.out, option="--out", inputs=inputs)
    yield Progress("evaluate", 0, 3, message="ground truth mask")
    truth = as_volume(request.ground_truth)
    gt = ground_truth_mask(truth)
    gt_mask = np.asarray(gt.data) > 0
    if isinstance(request.prediction, Volume):
        check_cancel(cancel)
        yield Progress("evaluate", 1, 3, message="resampling onto the ground truth grid")
        probs, resampled = resample_onto(request.prediction, truth)
        uncertainty = None if request.uncertainty is None else resample_onto(request.uncertainty, truth)[0]
        check_cancel(cancel)
        yield Progress("evaluate", 2, 3, message="metrics")
        metrics = evaluate_probabilities(
            probs, gt_mask, truth.spacing, uncertainty=uncertainty, threshold=request.threshold
        )
    else:
        yield Progress("evaluate", 2, 3, message="metrics")
        metrics, probs = _folder_scores(request.prediction, gt, request.threshold)
        resampled = False
    band = surface_band(gt_mask, truth.spacing, 2.0)
    output = EvaluateOutput(
        metrics,
        reliability_curve(probs, gt_mask),
        reliability_curve(probs[band], gt_mask[band]),
        int(gt_mask.size),
        resampled,
    )
    if out is not None:
        atomic_write_bytes(out, json.dumps(metrics, indent=2).encode())
        output.path = out
    return output


def run_evaluate(
    request: EvaluateRequest,
    on_progress: Callable[[Progress], None] | None = None,
    cancel: CancelFlag | None = None,
) -> EvaluateOutput:
    """Run :func:`evaluate_job_steps` to the end."""
    return drive(evaluate_job_steps(request, cancel), on_progress)
