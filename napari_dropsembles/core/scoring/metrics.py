"""Segmentation and calibration metrics (numpy/scipy only).

Masks are boolean arrays on one grid; probabilities are foreground probabilities in [0, 1].
Every function returns plain Python floats (``nan`` where a metric is undefined).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ..config.errors import InputError

METRIC_KEYS = (
    "dice",
    "hd95_mm",
    "ece",
    "nll",
    "brier",
    "ece_band",
    "nll_band",
    "brier_band",
    "auroc",
    "auroc_band",
    "overlap",
)


def _same_shape(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape != b.shape:
        raise InputError(f"{what}: shapes differ, {a.shape} vs {b.shape}")


def _spacing(spacing_mm, ndim: int) -> np.ndarray:
    sp = np.broadcast_to(np.asarray(spacing_mm, dtype=float), (ndim,)).copy()
    if np.any(~np.isfinite(sp)) or np.any(sp <= 0):
        raise InputError(f"spacing must be positive numbers, got {spacing_mm}")
    return sp


def _probs_labels(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(np.float64)
    _same_shape(p, y, "probabilities and labels")
    if p.size and (np.any(~np.isfinite(p)) or p.min() < -1e-6 or p.max() > 1 + 1e-6):
        raise InputError("probabilities must be finite and within [0, 1]")
    return np.clip(p, 0.0, 1.0), y


def dice(pred, gt) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    _same_shape(pred, gt, "dice")
    total = int(pred.sum()) + int(gt.sum())
    if total == 0:
        return 1.0
    return float(2.0 * np.count_nonzero(pred & gt) / total)


def _bbox(mask: np.ndarray, margin) -> tuple[slice, ...]:
    idx = np.argwhere(mask)
    lo = idx.min(axis=0)
    hi = idx.max(axis=0) + 1
    margin = np.broadcast_to(np.asarray(margin, dtype=int), (mask.ndim,))
    return tuple(
        slice(max(0, int(a - m)), min(n, int(b + m))) for a, b, m, n in zip(lo, hi, margin, mask.shape, strict=True)
    )


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95_mm(pred, gt, spacing_mm) -> float:
    """Symmetric 95th percentile Hausdorff distance (mm) between the surfaces of two masks.

    Surface voxels are a mask minus its erosion; the distances from each surface to the other
    (both directions, pooled as in medpy's ``hd95``) are measured with the EDT in mm.
    ``nan`` when either mask is empty.
    """
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    _same_shape(pred, gt, "hd95")
    sp = _spacing(spacing_mm, pred.ndim)
    if not pred.any() or not gt.any():
        return math.nan
    box = _bbox(pred | gt, 1)
    pred, gt = pred[box], gt[box]
    s_pred, s_gt = _surface(pred), _surface(gt)
    d_to_gt = ndimage.distance_transform_edt(~s_gt, sampling=sp)
    d_to_pred = ndimage.distance_transform_edt(~s_pred, sampling=sp)
    distances = np.concatenate([d_to_gt[s_pred], d_to_pred[s_gt]])
    return float(np.percentile(distances, 95))


def surface_band(gt, spacing_mm, width_voxels: float = 2.0) -> np.ndarray:
    """Voxels within ``width_voxels * min(spacing)`` mm of the surface of ``gt``, inside and outside.

    Inside voxels are measured to the nearest background voxel, outside voxels to the nearest
    foreground voxel; the voxels touching the boundary (6-neighbours) are always included.
    """
    gt = np.asarray(gt, dtype=bool)
    sp = _spacing(spacing_mm, gt.ndim)
    band = np.zeros(gt.shape, dtype=bool)
    if not gt.any() or gt.all():
        return band
    width_mm = float(width_voxels) * float(sp.min())
    margin = np.ceil(width_mm / sp).astype(int) + 2
    box = _bbox(gt, margin)
    g = gt[box]
    inside = ndimage.distance_transform_edt(g, sampling=sp)
    outside = ndimage.distance_transform_edt(~g, sampling=sp)
    dist = np.where(g, inside, outside)
    boundary = (g & ~ndimage.binary_erosion(g, border_value=1)) | (ndimage.binary_dilation(g) & ~g)
    band[box] = (dist <= width_mm + 1e-9) | boundary
    return band


def reliability_curve(probs, labels, n_bins: int = 15) -> dict:
    """Per-bin statistics of a binary reliability diagram (equal-width bins over [0, 1]).

    Returns numpy arrays ``bin_centres``, ``mean_prob`` and ``frequency`` (nan in empty bins),
    ``count``.
    """
    p, y = _probs_labels(probs, labels)
    n_bins = int(n_bins)
    if n_bins < 1:
        raise InputError(f"n_bins must be >= 1, got {n_bins}")
    idx = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.int64)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.where(count > 0, sum_p / np.maximum(count, 1), np.nan)
        frequency = np.where(count > 0, sum_y / np.maximum(count, 1), np.nan)
    centres = (np.arange(n_bins) + 0.5) / n_bins
    return {"bin_centres": centres, "mean_prob": mean_prob, "frequency": frequency, "count": count}


def ece(probs, labels, n_bins: int = 15) -> float:
    """Binary expected calibration error over equal-width bins of the foreground probability."""
    curve = reliability_curve(probs, labels, n_bins)
    count = curve["count"]
    n = int(count.sum())
    if n == 0:
        return math.nan
    used = count > 0
    gaps = np.abs(curve["mean_prob"][used] - curve["frequency"][used])
    return float(np.sum(count[used] / n * gaps))


def nll(probs, labels, eps: float = 1e-6) -> float:
    """Mean binary cross-entropy (nats), probabilities clipped to [eps, 1 - eps]."""
    p, y = _probs_labels(probs, labels)
    if p.size == 0:
        return math.nan
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def brier(probs, labels) -> float:
    """Mean squared difference between probability and label."""
    p, y = _probs_labels(probs, labels)
    if p.size == 0:
        return math.nan
    return float(np.mean((p - y) ** 2))


def auroc(scores, positives) -> float:
    """Area under the ROC curve of ``scores`` for ``positives`` (Mann-Whitney U, ties averaged).

    ``nan`` when one class is absent. O(N log N).
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    pos = np.asarray(positives, dtype=bool).ravel()
    _same_shape(s, pos, "auroc")
    n_pos = int(pos.sum())
    n_neg = int(pos.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return math.nan
    if np.any(np.isnan(s)):
        raise InputError("auroc: scores contain NaN")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    # average rank (1-based) of each group of ties
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], s.size]
    avg_rank = (starts + ends + 1) / 2.0
    group = np.repeat(np.arange(starts.size), ends - starts)
    rank_of_sorted = avg_rank[group]
    rank_sum_pos = float(rank_of_sorted[pos[order]].sum())
    u = rank_sum_pos - n_pos * (n_pos + 1) / 2.0
    return float(u / (float(n_pos) * float(n_neg)))


def uncertainty_error_overlap(uncertainty, error) -> float:
    """Dice between the error mask and the k most uncertain voxels, k = number of errors.

    ``nan`` when there are no errors (undefined). Ties at the k-th value are broken arbitrarily.
    """
    u = np.asarray(uncertainty, dtype=np.float64).ravel()
    e = np.asarray(error, dtype=bool).ravel()
    _same_shape(u, e, "uncertainty_error_overlap")
    k = int(e.sum())
    if k == 0:
        return math.nan
    if k == e.size:
        return 1.0
    u = np.nan_to_num(u, nan=-np.inf)
    top = np.argpartition(-u, k - 1)[:k]
    return float(np.count_nonzero(e[top]) / k)


def binary_entropy(probs) -> np.ndarray:
    """Entropy (nats) of a Bernoulli with probability ``probs``."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1 - 1e-12)
    return -(p * np.log(p) + (1 - p) * np.log1p(-p))


REPORTED = ("dice", "hd95_mm", "ece", "ece_band", "nll", "brier", "auroc", "auroc_band")  # every table's columns


def evaluate_probabilities(
    probs,
    gt,
    spacing_mm,
    *,
    uncertainty=None,
    threshold: float = 0.5,
    band_voxels: float = 2.0,
) -> dict[str, float]:
    """All metrics of a probability grid against a ground-truth mask on the same grid.

    Keys: ``METRIC_KEYS``. ``*_band`` are computed over ``surface_band(gt)``; ``auroc*`` and
    ``overlap`` score ``uncertainty`` (binary entropy of ``probs`` when None) for the errors
    ``(probs >= threshold) != gt``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    gt = np.asarray(gt, dtype=bool)
    _same_shape(probs, gt, "probabilities and ground truth")
    unc = binary_entropy(probs) if uncertainty is None else np.asarray(uncertainty, dtype=np.float64)
    _same_shape(unc, gt, "uncertainty and ground truth")
    pred = probs >= threshold
    error = pred != gt
    band = surface_band(gt, spacing_mm, band_voxels)
    result = {
        "dice": dice(pred, gt),
        "hd95_mm": hd95_mm(pred, gt, spacing_mm),
        "ece": ece(probs, gt),
        "nll": nll(probs, gt),
        "brier": brier(probs, gt),
        "ece_band": ece(probs[band], gt[band]),
        "nll_band": nll(probs[band], gt[band]),
        "brier_band": brier(probs[band], gt[band]),
        "auroc": auroc(unc, error),
        "auroc_band": auroc(unc[band], error[band]),
        "overlap": uncertainty_error_overlap(unc, error),
    }
    return {k: float(result[k]) for k in METRIC_KEYS}
