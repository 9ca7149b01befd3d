"""2D toy datasets: sinusoid boundary and upsampled digits."""

from __future__ import annotations

import numpy as np
import pytest

from bench.paper.toy_data import corrupt_digit, digits_shapes, sinusoid_dataset
from napari_dropsembles.core.config.errors import InputError


def test_sinusoid_shapes_and_rule():
    x, y = sinusoid_dataset(2000, np.random.default_rng(0))
    assert x.shape == (2000, 2) and x.dtype == np.float32
    assert y.shape == (2000,) and y.dtype == np.uint8
    assert np.all(x >= -3) and np.all(x <= 3)
    np.testing.assert_array_equal(y, (x[:, 1] > np.sin(x[:, 0])).astype(np.uint8))
    assert 0.3 < y.mean() < 0.7


def test_sinusoid_region_and_determinism():
    x, _ = sinusoid_dataset(500, np.random.default_rng(1), region=((0, 1), (10, 12)))
    assert np.all((x[:, 0] >= 0) & (x[:, 0] <= 1) & (x[:, 1] >= 10) & (x[:, 1] <= 12))
    a = sinusoid_dataset(100, np.random.default_rng(2))
    b = sinusoid_dataset(100, np.random.default_rng(2))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_shift_moves_the_boundary():
    x, y0 = sinusoid_dataset(4000, np.random.default_rng(3))
    _, y1 = sinusoid_dataset(4000, np.random.default_rng(3), shift=1.0)
    np.testing.assert_array_equal(y1, (x[:, 1] > np.sin(x[:, 0]) + 1.0).astype(np.uint8))
    assert y1.mean() < y0.mean() - 0.1
    # only points between the two boundaries change label
    changed = y0 != y1
    between = (x[:, 1] > np.sin(x[:, 0])) & (x[:, 1] <= np.sin(x[:, 0]) + 1.0)
    np.testing.assert_array_equal(changed, between)


def test_label_noise_flips_about_the_given_fraction():
    x, clean = sinusoid_dataset(5000, np.random.default_rng(4))
    _, noisy = sinusoid_dataset(5000, np.random.default_rng(4), noise=0.2)
    assert abs((clean != noisy).mean() - 0.2) < 0.03
    with pytest.raises(InputError):
        sinusoid_dataset(10, np.random.default_rng(0), noise=2.0)


def test_digits_load_offline_and_upsample():
    images, labels = digits_shapes(upsample=4)
    assert images.shape == (1797, 32, 32) and images.dtype == np.float32
    assert labels.shape == (1797,) and set(np.unique(labels)) == set(range(10))
    assert images.min() >= 0.0 and images.max() <= 1.0 and images.max() > 0.9
    small, _ = digits_shapes(upsample=1)
    assert small.shape == (1797, 8, 8)
    # linear upsampling keeps the corners of the original grid
    np.testing.assert_allclose(images[:, 0, 0], small[:, 0, 0], atol=1e-6)
    np.testing.assert_allclose(images[:, -1, -1], small[:, -1, -1], atol=1e-6)
    with pytest.raises(InputError):
        digits_shapes(upsample=0)


@pytest.fixture(scope="module")
def digit():
    images, _ = digits_shapes(upsample=4)
    return images[0]


def test_corrupt_occlude(digit):
    values, mask = corrupt_digit(digit, np.random.default_rng(0), "occlude", fraction=0.3)
    assert values.shape == mask.shape == digit.shape
    assert mask.dtype == bool and values.dtype == np.float32
    hidden = ~mask
    assert 0.2 < hidden.mean() < 0.4
    rows, cols = np.nonzero(hidden)
    # one rectangle
    assert hidden[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
    np.testing.assert_array_equal(values[mask], digit[mask])
    assert np.all(values[hidden] == 0)


def test_corrupt_erode(digit):
    values, mask = corrupt_digit(digit, np.random.default_rng(0), "erode")
    assert mask.all()
    assert np.all(values <= digit + 1e-7)
    assert values.sum() < 0.8 * digit.sum()


def test_corrupt_sparse(digit):
    values, mask = corrupt_digit(digit, np.random.default_rng(0), "sparse", fraction=0.2)
    assert 0.12 < mask.mean() < 0.28
    np.testing.assert_array_equal(values[mask], digit[mask])
    assert np.all(values[~mask] == 0)
    a = corrupt_digit(digit, np.random.default_rng(9), "sparse")
    b = corrupt_digit(digit, np.random.default_rng(9), "sparse")
    np.testing.assert_array_equal(a[1], b[1])


def test_corrupt_rejects_unknown_kind(digit):
    with pytest.raises(InputError):
        corrupt_digit(digit, np.random.default_rng(0), "blur")
    with pytest.raises(InputError):
        corrupt_digit(np.zeros((2, 2, 2)), np.random.default_rng(0), "sparse")
