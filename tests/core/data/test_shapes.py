"""Mask shapes as training shapes: thick-sliced masks queried only on their planes, and augmentation."""

from __future__ import annotations

import numpy as np

from napari_dropsembles.core.data import AugmentedShape, MaskShape
from tests.conftest import sphere_volume


def _ball(spacing=(1.0, 1.0, 1.0), centre=(4.0, 0.0, 0.0)) -> MaskShape:
    return MaskShape(sphere_volume(radius_mm=8.0, centre_mm=centre, spacing_mm=spacing, size_mm=24.0))


def test_a_thick_sliced_mask_snaps_points_onto_its_slice_planes():
    sparse = _ball(spacing=(1.0, 1.0, 3.0))
    assert sparse.observed_axis == 2
    points = np.random.default_rng(0).uniform(-10, 10, size=(200, 3))
    snapped = sparse.snap_to_observed(points)
    index = sparse.mask.world_to_index(snapped)
    assert np.allclose(index[:, 2], np.round(index[:, 2]))  # on a plane of the mask
    assert np.allclose(snapped[:, :2], points[:, :2]) and np.abs(snapped[:, 2] - points[:, 2]).max() <= 1.5 + 1e-9


def test_a_dense_mask_keeps_its_points():
    dense = _ball()
    assert dense.observed_axis is None
    points = np.random.default_rng(0).uniform(-10, 10, size=(20, 3))
    assert np.array_equal(dense.snap_to_observed(points), points)


def test_a_mirrored_and_scaled_shape_is_the_shape_seen_in_a_mirror():
    ball = _ball(centre=(4.0, 1.0, -2.0))
    lo, hi = ball.bounds_mm()
    centre = (lo + hi) / 2
    mirrored = AugmentedShape(ball, mirror=True, scale=1.1)
    points = np.random.default_rng(1).uniform(-12, 12, size=(500, 3)) + centre
    seen = (points - centre) * np.array([-1, 1, 1]) / 1.1 + centre
    assert np.array_equal(mirrored.occupancy(points), ball.occupancy(seen))
    assert np.allclose(mirrored.sdf(points), ball.sdf(seen) * 1.1)
    m_lo, m_hi = mirrored.bounds_mm()
    assert np.allclose(m_hi - m_lo, (hi - lo) * 1.1)


def test_an_augmented_thick_mask_still_snaps_onto_its_planes():
    sparse = _ball(spacing=(1.0, 1.0, 3.0))
    mirrored = AugmentedShape(sparse, mirror=True, scale=1.0)
    points = np.random.default_rng(2).uniform(-8, 8, size=(50, 3))
    snapped = mirrored.snap_to_observed(points)
    index = sparse.mask.world_to_index(snapped * np.array([-1, 1, 1]) + 2 * np.array([mirrored.centre[0], 0, 0]))
    assert np.allclose(index[:, 2], np.round(index[:, 2]))
