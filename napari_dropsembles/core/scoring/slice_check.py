"""Did the prior help on this case? Hold out observed slices, predict them, compare with interpolation.

A few interior observed slices are blanked (read as not annotated, so they give no labels and the
shape-based distances are interpolated across them); one network (the method's recipe with M = 1,
same steps) is fine-tuned on the rest and both it and shape-based interpolation predict the blanked
slices. Their Dice on those slices tells the user, on their own case, which of the two to trust.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator

import numpy as np
import torch

from ..config.configs import ReconstructionConfig
from ..config.progress import CancelFlag, Progress
from ..fitting.case import make_case
from ..fitting.methods import fit_steps
from ..networks.checkpoint import Prior
from ..slices.slice_field import SliceDistanceField, read_slices
from ..volumes.volume import Volume

MIN_SLICES = 4  # labelled slices needed before any can be spared
MARGIN_DICE = 0.03  # a smaller Dice difference on a few slices is a tie (docs/REAL.md measures how noisy it is)
VERDICT_BETTER = "the reconstruction predicted them better than interpolation between slices"
VERDICT_TIE = "the reconstruction and interpolation between slices predicted them about equally well"
VERDICT_WORSE = "interpolation between slices predicted them better: trust this reconstruction less"


def check_failed(check: dict | None) -> bool:
    """True when interpolation predicted the hidden drawn slices better than the network (a flag in the table)."""
    return bool(check) and check.get("verdict") == VERDICT_WORSE


def held_out_slices(
    observation: Volume, share: float, annotation_axis: int | None = None, annotated_empty: tuple[int, ...] = ()
) -> tuple[int, np.ndarray]:
    """(slice axis, interior labelled slices to hold out): about ``share`` of them, never two neighbours.

    The slice axis is the thick axis, or the annotation axis of a sparse annotation on a fine grid
    (core/slice_field.read_slices); -1 when the observation has neither. On a thick acquisition a
    slice next to a gap is not held out; on a sparse annotation every interior annotated slice can be.
    """
    mask = np.asarray(observation.data) > 0
    reading = read_slices(mask, observation.spacing, annotation_axis=annotation_axis, annotated_empty=annotated_empty)
    axis = reading.axis
    if axis is None:
        return -1, np.zeros(0, dtype=int)
    filled = mask.any(axis=tuple(a for a in range(3) if a != axis))
    gaps = set(reading.gaps.tolist())
    labelled = np.flatnonzero(filled)
    if len(labelled) < MIN_SLICES:
        return axis, np.zeros(0, dtype=int)
    ranks = {int(s): r for r, s in enumerate(labelled)}
    if reading.sparse:
        interior = [int(s) for s in labelled[1:-1]]
        position = ranks  # neighbours are the next annotated slices
    else:
        interior = [int(s) for s in labelled[1:-1] if s - 1 not in gaps and s + 1 not in gaps]
        position = {s: s for s in interior}
    count = min(max(2, int(round(share * len(interior)))), (len(interior) + 1) // 2)
    # Evenly spread over the interior (quantiles), never two neighbours: each keeps both of its own.
    chosen: list[int] = []
    for q in (np.arange(count) + 1) / (count + 1):
        target = q * (len(interior) - 1)
        free = [i for i in range(len(interior)) if all(abs(position[interior[i]] - position[c]) > 1 for c in chosen)]
        if free:
            chosen.append(interior[min(free, key=lambda i: abs(i - target))])
    return axis, np.array(sorted(chosen), dtype=int)


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = pred.sum() + truth.sum()
    return float(2 * (pred & truth).sum() / total) if total else 1.0


def slice_check_steps(
    observation: Volume,
    prior: Prior,
    config: ReconstructionConfig,
    *,
    share: float = 0.2,
    device: torch.device | str = "cpu",
    cancel: CancelFlag | None = None,
) -> Generator[Progress, None, dict | None]:
    """{"held_out_slices", "axis", "voxels", "ours_dice", "shape_based_dice", "verdict"}; only "held_out_slices"
    (empty), "axis" and "verdict" when too few slices are labelled; None without a thick axis."""
    axis, chosen = held_out_slices(observation, share, config.annotation_axis, config.annotated_empty)
    if axis < 0:
        return None
    if len(chosen) == 0:
        return {
            "held_out_slices": [],
            "axis": int(axis),
            "verdict": f"too few drawn slices to hide any for a check (it needs {MIN_SLICES})",
        }
    data = np.asarray(observation.data)
    blanked = np.array(data, copy=True)
    index = [slice(None)] * 3
    index[axis] = chosen
    blanked[tuple(index)] = 0
    spared = observation.with_data(blanked)
    single = dataclasses.replace(config, method="single", members=1, empty_slices="unobserved")
    reading = dict(annotation_axis=config.annotation_axis, annotated_empty=config.annotated_empty)
    case = make_case(spared, prior.config, empty_slices="unobserved", **reading)
    fitted = yield from fit_steps(case, prior, single, device=device, cancel=cancel)
    voxels = np.argwhere(np.ones(observation.shape, dtype=bool)[tuple(index)])
    voxels[:, axis] = chosen[voxels[:, axis]]
    points = observation.index_to_world(voxels)
    truth = data[tuple(voxels.T)] > 0
    ours = fitted.predict(points)[0] >= 0.5
    inside = (np.abs(fitted.frame.to_normalised(points)) < 0.5).all(1)
    spared_reading = read_slices(spared.data, spared.spacing, **reading)
    interpolated = SliceDistanceField(spared, "unobserved", reading=spared_reading)(points) < 0
    near = inside & (ours | truth | interpolated)  # scored where anything is foreground, inside the box
    ours_dice, shape_dice = _dice(ours[near], truth[near]), _dice(interpolated[near], truth[near])
    if ours_dice > shape_dice + MARGIN_DICE:
        verdict = VERDICT_BETTER
    elif ours_dice < shape_dice - MARGIN_DICE:
        verdict = VERDICT_WORSE
    else:
        verdict = VERDICT_TIE
    return {
        "held_out_slices": [int(s) for s in chosen],
        "axis": int(axis),
        "voxels": int(near.sum()),
        "ours_dice": round(ours_dice, 4),
        "shape_based_dice": round(shape_dice, 4),
        "verdict": verdict,
    }
