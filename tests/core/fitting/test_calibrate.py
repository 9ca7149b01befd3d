"""Fitting a calibration head on rows of real cases (here: synthetic rows with a known answer)."""

from __future__ import annotations

import numpy as np
import torch

from napari_dropsembles.core.fitting.calibrate import _swapped, case_rows, fit_calibration
from napari_dropsembles.core.networks.calibration import INTERPOLATION_FEATURES


def _synthetic_rows(seed: int, n: int = 3000):
    """Truth = inside the interpolated surface pushed out by a bulge at mid-gap; members know nothing."""
    rng = np.random.default_rng(seed)
    features = np.zeros((n, len(INTERPOLATION_FEATURES)), dtype=np.float32)
    t = rng.random(n).astype(np.float32)
    interpolated = rng.normal(0, 1, n).astype(np.float32)
    features[:, INTERPOLATION_FEATURES.index("interpolated")] = interpolated
    features[:, INTERPOLATION_FEATURES.index("t")] = t
    features[:, INTERPOLATION_FEATURES.index("mid_gap")] = 4 * t * (1 - t)
    truth = (interpolated < 0.5 * 4 * t * (1 - t)).astype(np.float32)
    members = np.full((4, n), 0.5, dtype=np.float32)
    return case_rows(features, members, truth, np.ones(n, bool), rng, subject=f"s{seed}")


def test_the_head_learns_the_bulge_that_straight_interpolation_misses():
    calibration = fit_calibration([_synthetic_rows(0), _synthetic_rows(1)], {"test": True}, seed=0)
    test = _synthetic_rows(2)
    probs = calibration.probabilities(test.interpolation, torch.from_numpy(test.members)).mean(0).numpy()
    accuracy = ((probs > 0.5) == (test.truth > 0.5)).mean()
    straight = ((test.interpolation[:, INTERPOLATION_FEATURES.index("interpolated")] < 0) == (test.truth > 0.5)).mean()
    assert accuracy > 0.97 and accuracy > straight + 0.05
    assert calibration.interpolation is not None and calibration.logistic is not None
    assert calibration.provenance == {"test": True}


def test_swapping_the_slice_axis_reverses_the_slices_and_t():
    rows = _synthetic_rows(0, n=5)
    rows.interpolation[:, :4] = np.arange(4)
    swapped = _swapped(rows.interpolation)
    assert (swapped[:, :4] == np.arange(4)[::-1]).all()
    t = INTERPOLATION_FEATURES.index("t")
    assert np.allclose(swapped[:, t], 1 - rows.interpolation[:, t])


def test_far_voxels_are_sampled_and_weighted_back():
    rng = np.random.default_rng(0)
    n = 20000
    near = np.zeros(n, bool)
    near[:100] = True
    rows = case_rows(
        np.zeros((n, len(INTERPOLATION_FEATURES)), np.float32), np.zeros((2, n), np.float32), np.zeros(n), near, rng
    )
    kept_far = len(rows.truth) - 100
    assert 0.03 * (n - 100) < kept_far < 0.07 * (n - 100)
    assert np.isclose(rows.weights.mean(), 1.0)
