"""Corruption simulator (dataset B)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from napari_dropsembles.core.config.errors import InputError
from napari_dropsembles.core.data import (
    Corruption,
    boundary_band,
    observation_frame,
    random_corruption,
    random_vertebra,
    simulate_observation,
    voxelize,
)
from napari_dropsembles.core.volumes.volume import Volume


@pytest.fixture(scope="module")
def vertebra():
    return random_vertebra(11)


def observe(shape, seed=0, **kwargs):
    kwargs.setdefault("slice_offset", 0.25)
    return simulate_observation(shape, Corruption(**kwargs), np.random.default_rng(seed))


@pytest.fixture(scope="module")
def clean(vertebra):
    return observe(vertebra)


def test_spacing_axis_and_grid(vertebra, clean):
    assert isinstance(clean, Volume)
    assert clean.data.dtype == np.uint8 and set(np.unique(clean.data)) == {0, 1}
    np.testing.assert_allclose(clean.spacing, (1.0, 1.0, 4.0))
    affine, shape = observation_frame(vertebra, Corruption(slice_offset=0.25), 0.25)
    assert clean.shape == shape
    np.testing.assert_allclose(clean.affine, affine)
    # the grid covers the shape bounds + margin
    lo, hi = vertebra.bounds_mm()
    corners = clean.index_to_world(np.array([[0, 0, 0], np.array(clean.shape) - 1]))
    assert np.all(corners[0] <= lo - 6.0 + 1e-9) and np.all(corners[1] >= hi + 6.0 - 1e-9)
    # thick axis 0, other in-plane spacing
    other = observe(vertebra, slice_axis=0, in_plane_mm=0.8, slice_factor=3.0)
    np.testing.assert_allclose(other.spacing, (2.4, 0.8, 0.8))
    expected = np.ceil((hi - lo + 12.0) / other.spacing).astype(int)
    assert abs(other.shape[1] - expected[1]) <= 1 and abs(other.shape[2] - expected[2]) <= 1
    assert other.shape[0] < other.shape[1]


def test_observed_volume_close_to_the_shape(vertebra, clean):
    fine = voxelize(vertebra, 1.0, supersample=2)
    true_ml = fine.data.sum() / 1000.0
    obs_ml = clean.data.sum() * np.prod(clean.spacing) / 1000.0
    assert abs(obs_ml - true_ml) / true_ml < 0.12


def test_deterministic_given_rng_state(vertebra):
    c = Corruption(slice_factor=3.0, morphology=-1, label_noise=0.2, missing_slices=0.2)
    a = simulate_observation(vertebra, c, np.random.default_rng(5))
    b = simulate_observation(vertebra, c, np.random.default_rng(5))
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.affine, b.affine)
    d = simulate_observation(vertebra, c, np.random.default_rng(6))
    assert not np.array_equal(a.origin, d.origin) or not np.array_equal(a.data, d.data)


def test_offset_shifts_the_origin_along_the_thick_axis(vertebra):
    a = observe(vertebra, slice_offset=0.0)
    b = observe(vertebra, slice_offset=0.5)
    shift = a.origin - b.origin
    np.testing.assert_allclose(shift, (0.0, 0.0, 0.5 * 4.0))
    # a random offset (None) is drawn from the rng: within one slice spacing of offset 0
    r = simulate_observation(vertebra, Corruption(), np.random.default_rng(1))
    assert 0.0 <= a.origin[2] - r.origin[2] < 4.0
    np.testing.assert_allclose(r.origin[:2], a.origin[:2])


def test_no_corruption_is_exact_partial_volume(vertebra):
    """All corruptions off: the label is the thresholded sub-sample fraction, nothing else."""
    c = Corruption(in_plane_mm=2.0, slice_factor=2.0, slice_offset=0.3, partial_volume_threshold=0.5)
    obs = simulate_observation(vertebra, c, np.random.default_rng(0))
    subs = np.array(c.subsamples)
    assert tuple(subs) == (2, 2, 2)
    # brute force: every sub-sample of every voxel through shape.occupancy
    offs = [((np.arange(s) + 0.5) / s - 0.5) * sp for s, sp in zip(subs, obs.spacing, strict=True)]
    sub = np.stack(np.meshgrid(*offs, indexing="ij"), axis=-1).reshape(-1, 3)
    centres = obs.voxel_centres_mm()
    inside = vertebra.occupancy((centres[:, None, :] + sub[None]).reshape(-1, 3)).reshape(len(centres), -1)
    expected = (inside.mean(axis=1) >= 0.5).reshape(obs.shape)
    np.testing.assert_array_equal(obs.data.astype(bool), expected)
    # isotropic and uncorrupted: the same as a supersampled voxelisation, thresholded
    iso = Corruption(in_plane_mm=1.5, slice_factor=1.0, slice_offset=0.0)
    obs = simulate_observation(vertebra, iso, np.random.default_rng(0))
    vox = voxelize(vertebra, 1.5, supersample=2, origin_mm=obs.origin, grid_shape=obs.shape)
    np.testing.assert_array_equal(obs.data.astype(bool), vox.data >= 0.5)


def test_threshold_moves_the_boundary(vertebra):
    low = observe(vertebra, partial_volume_threshold=0.25)
    high = observe(vertebra, partial_volume_threshold=0.75)
    mid = observe(vertebra, partial_volume_threshold=0.5)
    assert np.all(high.data <= mid.data) and np.all(mid.data <= low.data)
    assert high.data.sum() < mid.data.sum() < low.data.sum()


def test_erosion_and_dilation_are_in_plane(vertebra, clean):
    eroded = observe(vertebra, morphology=-1)
    dilated = observe(vertebra, morphology=1)
    assert eroded.data.sum() < clean.data.sum() < dilated.data.sum()
    assert np.all(eroded.data <= clean.data) and np.all(clean.data <= dilated.data)
    # per slice (2D): slices empty in the clean label stay empty after dilation
    empty = clean.data.sum(axis=(0, 1)) == 0
    assert empty.any()
    assert np.all(dilated.data.sum(axis=(0, 1))[empty] == 0)


def test_label_noise_only_touches_the_boundary(vertebra, clean):
    noisy = observe(vertebra, label_noise=0.3)
    changed = noisy.data != clean.data
    band = boundary_band(clean.data)
    assert changed.any()
    assert not np.any(changed & ~band)
    n, p = band.sum(), 0.3
    assert abs(changed.sum() - n * p) < 5 * np.sqrt(n * p * (1 - p))


def test_missing_slices_zero_whole_slices(vertebra, clean):
    holey = observe(vertebra, missing_slices=0.3)
    touched = np.flatnonzero(clean.data.any(axis=(0, 1)))
    per_slice_same = np.all(holey.data == clean.data, axis=(0, 1))
    per_slice_zero = ~holey.data.any(axis=(0, 1))
    assert np.all(per_slice_same | per_slice_zero)
    dropped = [k for k in touched if not per_slice_same[k]]
    assert len(dropped) == int(round(0.3 * len(touched)))
    # on another axis
    side = observe(vertebra, slice_axis=1, missing_slices=0.5)
    ref = observe(vertebra, slice_axis=1)
    keep = np.all(side.data == ref.data, axis=(0, 2))
    assert np.all(keep | ~side.data.any(axis=(0, 2)))
    assert (~keep).sum() == int(round(0.5 * ref.data.any(axis=(0, 2)).sum()))


def test_random_corruption():
    rng = np.random.default_rng(0)
    cs = [random_corruption(rng) for _ in range(200)]
    factors = np.array([c.slice_factor for c in cs])
    assert factors.min() >= 2.0 and factors.max() <= 5.0
    assert all(c.slice_axis == 2 and c.slice_offset is None for c in cs)
    assert 0.15 < np.mean([c.morphology != 0 for c in cs]) < 0.45
    assert 0.15 < np.mean([c.label_noise > 0 for c in cs]) < 0.45
    assert all(c.missing_slices == 0 for c in cs)
    assert all(0.4 <= c.partial_volume_threshold <= 0.6 for c in cs)
    a = random_corruption(np.random.default_rng(3), missing_prob=1.0, erosion_prob=1.0, noise_prob=1.0)
    assert a.missing_slices > 0 and a.morphology in (-1, 1) and a.label_noise > 0
    b = random_corruption(np.random.default_rng(3), missing_prob=1.0, erosion_prob=1.0, noise_prob=1.0)
    assert a == b
    none = random_corruption(rng, erosion_prob=0.0, noise_prob=0.0, slice_factors=(3.0, 3.0))
    assert none.morphology == 0 and none.label_noise == 0 and none.slice_factor == 3.0
    axes = {random_corruption(rng, slice_axes=(0, 1, 2)).slice_axis for _ in range(50)}
    assert axes == {0, 1, 2}


@pytest.mark.parametrize(
    "bad",
    [
        {"in_plane_mm": 0.0},
        {"slice_factor": 0.5},
        {"slice_axis": 3},
        {"slice_offset": 1.0},
        {"partial_volume_threshold": 0.0},
        {"morphology": 2},
        {"label_noise": 1.5},
        {"missing_slices": 1.0},
    ],
)
def test_corruption_validation(bad):
    with pytest.raises(InputError):
        Corruption(**bad)


def test_corruption_roundtrips_through_asdict():
    c = random_corruption(np.random.default_rng(1))
    assert Corruption(**dataclasses.asdict(c)) == c
