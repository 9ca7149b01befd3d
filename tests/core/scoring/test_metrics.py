import json
import math

import numpy as np
import pytest

from napari_dropsembles.core.config.errors import InputError
from napari_dropsembles.core.scoring.metrics import (
    METRIC_KEYS,
    auroc,
    brier,
    dice,
    ece,
    evaluate_probabilities,
    hd95_mm,
    nll,
    reliability_curve,
    surface_band,
    uncertainty_error_overlap,
)


def test_dice_by_hand():
    a = np.array([1, 1, 1, 0, 0], bool)
    b = np.array([0, 1, 1, 1, 0], bool)
    assert dice(a, b) == pytest.approx(2 * 2 / 6)
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
    assert dice(a, np.zeros(5, bool)) == 0.0
    with pytest.raises(InputError):
        dice(a, np.zeros(4, bool))


def test_ece_by_hand():
    # 15 bins of width 1/15: 0.1 -> bin 1, 0.2 -> bin 3, 0.8 and 0.9 -> bins 12 and 13.
    p = np.array([0.1, 0.2, 0.8, 0.9])
    y = np.array([0, 1, 1, 1])
    expected = 0.25 * (0.1 + 0.8 + 0.2 + 0.1)
    assert ece(p, y) == pytest.approx(expected)
    # two bins: [0, .5), [.5, 1]: bin0 = {0.1, 0.2} mean .15 freq .5; bin1 = {.8, .9} mean .85 freq 1
    assert ece(p, y, n_bins=2) == pytest.approx(0.5 * 0.35 + 0.5 * 0.15)
    # p = 1.0 falls in the last bin, perfectly calibrated
    assert ece(np.array([1.0, 0.0]), np.array([1, 0])) == pytest.approx(0.0)
    curve = reliability_curve(p, y, n_bins=2)
    np.testing.assert_allclose(curve["bin_centres"], [0.25, 0.75])
    np.testing.assert_allclose(curve["mean_prob"], [0.15, 0.85])
    np.testing.assert_allclose(curve["frequency"], [0.5, 1.0])
    np.testing.assert_array_equal(curve["count"], [2, 2])
    assert math.isnan(reliability_curve(p, y)["mean_prob"][0])
    with pytest.raises(InputError):
        ece(np.array([1.5]), np.array([1]))


def test_nll_brier_by_hand():
    p = np.array([0.9, 0.2, 0.5])
    y = np.array([1, 0, 1])
    assert nll(p, y) == pytest.approx(-(np.log(0.9) + np.log(0.8) + np.log(0.5)) / 3)
    assert brier(p, y) == pytest.approx((0.01 + 0.04 + 0.25) / 3)
    assert np.isfinite(nll(np.array([0.0]), np.array([1])))


def _auroc_bruteforce(s, pos):
    sp, sn = s[pos], s[~pos]
    diff = sp[:, None] - sn[None, :]
    return (np.sum(diff > 0) + 0.5 * np.sum(diff == 0)) / diff.size


def test_auroc_matches_pairwise_count_with_ties():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 6, size=300).astype(float)  # many ties
    pos = rng.random(300) < 0.3 + 0.1 * s / 5
    assert auroc(s, pos) == pytest.approx(_auroc_bruteforce(s, pos), abs=1e-12)
    s2 = rng.random(200)
    pos2 = rng.random(200) < s2
    assert auroc(s2, pos2) == pytest.approx(_auroc_bruteforce(s2, pos2), abs=1e-12)
    assert auroc(np.array([0.1, 0.9]), np.array([False, True])) == 1.0
    assert auroc(np.ones(4), np.array([0, 1, 0, 1], bool)) == 0.5
    assert math.isnan(auroc(np.ones(4), np.zeros(4, bool)))


def test_auroc_large():
    rng = np.random.default_rng(1)
    n = 2_000_000
    s = rng.random(n).astype(np.float32)
    pos = rng.random(n) < 0.1
    assert auroc(s, pos) == pytest.approx(0.5, abs=0.01)


def test_hd95_shifted_cubes():
    spacing = (2.5, 1.0, 0.8)
    a = np.zeros((30, 30, 30), bool)
    b = np.zeros_like(a)
    a[10:20, 10:20, 10:20] = True
    b[12:22, 10:20, 10:20] = True  # shifted by 2 voxels along the 2.5 mm axis
    assert hd95_mm(a, b, spacing) == pytest.approx(5.0)
    assert hd95_mm(b, a, spacing) == pytest.approx(5.0)
    c = np.zeros_like(a)
    c[10:20, 10:20, 13:23] = True  # 3 voxels along the 0.8 mm axis
    assert hd95_mm(a, c, spacing) == pytest.approx(2.4)
    assert hd95_mm(a, a, spacing) == 0.0
    assert math.isnan(hd95_mm(a, np.zeros_like(a), spacing))


def test_surface_band():
    gt = np.zeros((20, 20, 20), bool)
    gt[5:15, 5:15, 5:15] = True
    band = surface_band(gt, (1, 1, 1), 2.0)
    line = band[10, 10, :]
    # inside: 2 layers (5, 6 and 13, 14); outside: 2 layers (3, 4 and 15, 16)
    np.testing.assert_array_equal(np.flatnonzero(line), [3, 4, 5, 6, 13, 14, 15, 16])
    assert not band[10, 10, 10]
    # a thick axis still has its touching neighbours in the band
    band_aniso = surface_band(gt, (1, 1, 3), 2.0)
    np.testing.assert_array_equal(np.flatnonzero(band_aniso[10, 10, :]), [4, 5, 14, 15])
    assert not surface_band(np.zeros((4, 4, 4), bool), 1.0).any()


def test_overlap():
    u = np.array([0.9, 0.8, 0.1, 0.2, 0.0])
    e = np.array([1, 0, 1, 0, 0], bool)
    assert uncertainty_error_overlap(u, e) == pytest.approx(0.5)
    assert uncertainty_error_overlap(u, u > 0.5) == 1.0
    assert math.isnan(uncertainty_error_overlap(u, np.zeros(5, bool)))


def test_evaluate_probabilities():
    rng = np.random.default_rng(0)
    gt = np.zeros((24, 24, 24), bool)
    gt[6:18, 6:18, 6:18] = True
    probs = np.clip(gt * 0.8 + 0.1 + rng.normal(0, 0.15, gt.shape), 0, 1)
    out = evaluate_probabilities(probs, gt, (1.0, 1.0, 2.0))
    assert tuple(out) == METRIC_KEYS
    assert all(type(v) is float for v in out.values())
    json.dumps(out)
    pred = probs >= 0.5
    assert out["dice"] == pytest.approx(dice(pred, gt))
    assert out["brier"] == pytest.approx(brier(probs, gt))
    band = surface_band(gt, (1.0, 1.0, 2.0))
    assert out["nll_band"] == pytest.approx(nll(probs[band], gt[band]))
    assert 0.5 < out["auroc"] <= 1.0
    # an uncertainty that marks the errors exactly
    perfect = evaluate_probabilities(probs, gt, (1.0, 1.0, 2.0), uncertainty=(pred != gt).astype(float))
    assert perfect["auroc"] == 1.0 and perfect["overlap"] == 1.0
