"""Shared helpers: method grid, metrics of member probabilities, reliability accumulation, cost rows."""

from __future__ import annotations

import math
import os

import numpy as np

from napari_dropsembles.core.scoring.metrics import (
    auroc,
    binary_entropy,
    brier,
    dice,
    ece,
    hd95_mm,
    nll,
    reliability_curve,
)

METHOD_ORDER = ("single", "mc_dropout", "deep_ensemble", "dropsembles")
LABELS = {
    "single": "single",
    "mc_dropout": "MC dropout",
    "deep_ensemble": "deep ensemble",
    "dropsembles": "Dropsembles",
}
N_BINS = 15


def single_thread() -> None:
    """One OpenMP/torch thread: on a busy 2-core machine two threads were measured 20x slower."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


def uncertainty_of(probs: np.ndarray) -> np.ndarray:
    """Member variance (entropy of the mean for a single member), as ``core.evaluate.score_maps``."""
    mean = probs.mean(0)
    return probs.var(0) if probs.shape[0] > 1 else binary_entropy(mean)


def score_probabilities(probs: np.ndarray, gt: np.ndarray, *, image_shape=None, threshold: float = 0.5) -> dict:
    """Metrics of member probabilities [M, N] against a boolean ground truth [N].

    ``accuracy`` always; with ``image_shape`` (digits) also ``dice`` and ``hd95_px`` on the image.
    ``auroc`` scores the member variance (entropy for M = 1) for the errors of the mean.
    """
    probs = np.asarray(probs, dtype=np.float64)
    gt = np.asarray(gt, dtype=bool).ravel()
    mean = probs.mean(0)
    pred = mean >= threshold
    error = pred != gt
    result = {
        "accuracy": float(np.mean(~error)),
        "ece": ece(mean, gt, N_BINS),
        "nll": nll(mean, gt),
        "brier": brier(mean, gt),
        "auroc": auroc(uncertainty_of(probs), error),
        "auroc_entropy": auroc(binary_entropy(mean), error),
    }
    if image_shape is not None:
        result["dice"] = dice(pred.reshape(image_shape), gt.reshape(image_shape))
        result["hd95_px"] = hd95_mm(pred.reshape(image_shape), gt.reshape(image_shape), 1.0)
        if not math.isfinite(result["hd95_px"]):  # an empty prediction: the largest distance in the image
            result["hd95_px"] = float(np.hypot(*image_shape))
    return result


def empty_prediction_hd95(row: dict, shape, spacing) -> dict:
    """HD95 of an empty prediction (``nan`` in core.metrics) set to the grid's diagonal in mm."""
    if not math.isfinite(row["hd95_mm"]):
        row["hd95_mm"] = float(np.linalg.norm(np.asarray(shape) * np.asarray(spacing)))
    return row


class Reliability:
    """Accumulates per-bin counts, summed probabilities and summed labels over cases, per key."""

    def __init__(self) -> None:
        self.bins: dict[str, np.ndarray] = {}

    def add(self, key: str, probs: np.ndarray, labels: np.ndarray) -> None:
        curve = reliability_curve(np.asarray(probs, np.float64).ravel(), np.asarray(labels, bool).ravel(), N_BINS)
        count = curve["count"].astype(np.float64)
        stats = np.stack([count, np.nan_to_num(curve["mean_prob"]) * count, np.nan_to_num(curve["frequency"]) * count])
        self.bins[key] = self.bins.get(key, 0) + stats

    def to_json(self) -> dict:
        out = {}
        for key, (count, sum_p, sum_y) in self.bins.items():
            used = count > 0
            out[key] = {
                "count": count.astype(int).tolist(),
                "mean_prob": np.where(used, sum_p / np.maximum(count, 1), -1.0).tolist(),
                "frequency": np.where(used, sum_y / np.maximum(count, 1), -1.0).tolist(),
            }
        return out


def mean_rows(rows: list[dict], keys) -> dict:
    """nan-aware mean of ``keys`` over rows (a key that is nan in every row stays nan)."""
    out = {}
    for key in keys:
        values = np.array([r[key] for r in rows if key in r], dtype=np.float64)
        finite = values[np.isfinite(values)]
        out[key] = float(finite.mean()) if finite.size else math.nan
    return out


def cost_fields(n_pretrained: int, pretrain_flops: float, pretrain_wall_s: float, finetune_flops: float,
                finetune_wall_s: float, predict_flops: float = 0.0) -> dict:
    """Total compute = pretraining (``n_pretrained`` networks) + fine-tuning; prediction reported apart."""
    return {
        "pretrained_models": n_pretrained,
        "pretrain_gflop": n_pretrained * pretrain_flops / 1e9,
        "finetune_gflop": finetune_flops / 1e9,
        "total_gflop": (n_pretrained * pretrain_flops + finetune_flops) / 1e9,
        "predict_gflop": predict_flops / 1e9,
        "pretrain_wall_s": n_pretrained * pretrain_wall_s,
        "finetune_wall_s": finetune_wall_s,
        "total_wall_s": n_pretrained * pretrain_wall_s + finetune_wall_s,
    }


def pretrained_count(method: str, members: int) -> int:
    return members if method == "deep_ensemble" else 1


def table(name: str, columns: list[str], rows: list[dict], labels: int, note: str = "") -> dict:
    """A results table: the first ``labels`` columns are labels, the rest computed numbers."""
    return {"name": name, "columns": columns, "labels": labels, "note": note,
            "rows": [[row[c] for c in columns] for row in rows]}
