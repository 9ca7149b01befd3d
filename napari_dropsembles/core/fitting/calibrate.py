"""Learning a prior's calibration head from reconstructions of real cases with a known truth.

Each training case is a dense mask seen through thick slices and reconstructed by a network that never
saw its subject; the voxels near either surface (and a thin sample of the rest, weighted back) become
rows of (interpolation features, member probabilities, truth). :func:`fit_calibration` fits the heads
of core/networks/calibration on them; both sides of every row are used (slices below and above
swapped, t -> 1 - t), so the head does not depend on which way the slice axis points.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from ..networks.calibration import (
    INTERPOLATION_FEATURES,
    LOGISTIC_FEATURES,
    NETWORK_FEATURES,
    Calibration,
    CalibrationHead,
    logistic_features,
    member_features,
)

HIDDEN = 32
EPOCHS = 6
BATCH = 4096
MIN_STEPS = 600  # optimiser steps at least, however few the rows
FAR_SAMPLE = 0.05  # share of the voxels far from both surfaces kept (weighted back by 1 / share)
CASE_ROWS = 20_000  # rows kept per case at most (a uniform sample), so that every case weighs alike


@dataclass(frozen=True)
class CalibrationRows:
    """Rows of one case: interpolation features [N, F], member probabilities [M, N], truth [N], weights [N]."""

    interpolation: np.ndarray
    members: np.ndarray
    truth: np.ndarray
    weights: np.ndarray
    subject: str = ""


def case_rows(
    interpolation: np.ndarray,
    members: np.ndarray,
    truth: np.ndarray,
    near: np.ndarray,
    rng: np.random.Generator,
    subject: str = "",
) -> CalibrationRows:
    """The rows of one case: every voxel ``near`` a surface, and a ``FAR_SAMPLE`` share of the others;
    at most ``CASE_ROWS`` of them (a uniform sample)."""
    far = np.flatnonzero(~near)
    kept_far = far[rng.random(len(far)) < FAR_SAMPLE]
    index = np.concatenate([np.flatnonzero(near), kept_far])
    weights = np.concatenate([np.ones(int(near.sum())), np.full(len(kept_far), 1.0 / FAR_SAMPLE)])
    if len(index) > CASE_ROWS:
        keep = np.sort(rng.choice(len(index), CASE_ROWS, replace=False))
        index, weights = index[keep], weights[keep]
    return CalibrationRows(
        interpolation[index],
        members[:, index],
        truth[index].astype(np.float32),
        weights / weights.sum() * len(weights),
        subject,
    )


def _swapped(features: np.ndarray) -> np.ndarray:
    """The same rows seen with the slice axis reversed: slices below <-> above, t -> 1 - t."""
    out = features.copy()
    out[:, :4] = features[:, 3::-1]
    t = INTERPOLATION_FEATURES.index("t")
    out[:, t] = 1 - features[:, t]
    return out


def _train(inputs: torch.Tensor, truth: torch.Tensor, weights: torch.Tensor, seed: int, layers: int) -> CalibrationHead:
    generator = torch.Generator().manual_seed(seed)
    sizes = [inputs.shape[1]] + [HIDDEN] * (layers - 1) + [1]
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        bound = 1 / np.sqrt(fan_in)
        weight = ((torch.rand(fan_in, fan_out, generator=generator) * 2 - 1) * bound).requires_grad_()
        bias = ((torch.rand(fan_out, generator=generator) * 2 - 1) * bound).requires_grad_()
        params.append((weight, bias))
    head = CalibrationHead((), tuple(params))
    optimiser = torch.optim.Adam([p for pair in params for p in pair], lr=3e-3)
    batches_per_epoch = max(1, -(-len(inputs) // BATCH))
    epochs = max(EPOCHS, -(-MIN_STEPS // batches_per_epoch))  # small data: more passes, the same optimiser steps
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(inputs), BATCH):
            batch = order[start : start + BATCH]
            loss = F.binary_cross_entropy_with_logits(head(inputs[batch]), truth[batch], reduction="none")
            loss = (loss * weights[batch]).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return CalibrationHead((), tuple((w.detach(), b.detach()) for w, b in params))


def fit_calibration(rows: Sequence[CalibrationRows], provenance: dict, seed: int = 0, layers: int = 3) -> Calibration:
    """The head with the network fitted on ``rows`` (each case once per member, in turn), and, to measure
    what the network adds, the same head without it and the logistic baseline on the interpolation alone."""
    rng = np.random.default_rng(seed)
    interpolation, network, truth, weights = [], [], [], []
    for case in rows:
        for features in (case.interpolation, _swapped(case.interpolation)):
            member = int(rng.integers(case.members.shape[0]))
            extra = member_features(torch.from_numpy(case.members.astype(np.float32)))[member].numpy()
            interpolation.append(features)
            network.append(np.concatenate([features, extra], axis=1))
            truth.append(case.truth)
            weights.append(case.weights)
    y = torch.from_numpy(np.concatenate(truth)).float()
    w = torch.from_numpy(np.concatenate(weights)).float()
    plain = np.concatenate(interpolation)
    heads = {}
    for name, inputs, depth in (
        ("network", np.concatenate(network), layers),
        ("interpolation", plain, layers),
        ("logistic", logistic_features(plain), 1),
    ):
        heads[name] = _train(torch.from_numpy(inputs).float(), y, w, seed + len(heads), depth)
    return Calibration(
        network=CalibrationHead(NETWORK_FEATURES, heads["network"].layers),
        interpolation=CalibrationHead(INTERPOLATION_FEATURES, heads["interpolation"].layers),
        logistic=CalibrationHead(LOGISTIC_FEATURES, heads["logistic"].layers),
        provenance=dict(provenance),
    )
