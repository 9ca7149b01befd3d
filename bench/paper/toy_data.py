"""2D datasets for the toy and digits studies of the Dropsembles paper (no downloads; part of bench/paper)."""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

from napari_dropsembles.core.config.errors import InputError


def sinusoid_dataset(
    n: int,
    rng: np.random.Generator,
    *,
    shift: float = 0.0,
    noise: float = 0.0,
    region=((-3.0, 3.0), (-3.0, 3.0)),
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points uniform in ``region`` with label ``x1 > sin(x0) + shift``.

    ``shift`` moves the decision boundary up (a covariate/label shift between two tasks);
    ``noise`` is the probability of flipping each label. Returns (X (n, 2) float32, y (n,) uint8).
    """
    n = int(n)
    if n < 0:
        raise InputError(f"n must be >= 0, got {n}")
    if not 0 <= noise <= 1:
        raise InputError(f"noise must be in [0, 1], got {noise}")
    (x0_lo, x0_hi), (x1_lo, x1_hi) = region
    lo = np.array([x0_lo, x1_lo], dtype=float)
    hi = np.array([x0_hi, x1_hi], dtype=float)
    x = lo + rng.random((n, 2)) * (hi - lo)
    y = x[:, 1] > np.sin(x[:, 0]) + shift
    if noise > 0:
        y ^= rng.random(n) < noise
    return x.astype(np.float32), y.astype(np.uint8)


def digits_shapes(upsample: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (bundled, no network), intensities scaled to [0, 1] and upsampled
    by ``upsample`` with linear interpolation. Returns (images (n, 8u, 8u) float32, labels (n,))."""
    upsample = int(upsample)
    if upsample < 1:
        raise InputError(f"upsample must be >= 1, got {upsample}")
    images, labels = _digits(upsample)
    return images.copy(), labels.copy()


@functools.lru_cache(maxsize=4)
def _digits(upsample: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    if upsample > 1:
        images = ndimage.zoom(images, (1, upsample, upsample), order=1)
    return np.clip(images, 0.0, 1.0).astype(np.float32), digits.target.astype(np.int64)


DIGIT_CORRUPTIONS = ("occlude", "erode", "sparse")


def corrupt_digit(
    image: np.ndarray, rng: np.random.Generator, kind: str, *, fraction: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A partial or biased observation of a 2D ``image``: (observed_values float32, observed_mask bool).

    ``observed_mask`` is where the value is known; values outside it are 0.

    - ``"occlude"``: a random axis-aligned rectangle covering ``fraction`` (default U(0.25, 0.5)) of
      the image is unknown.
    - ``"erode"``: every pixel is known but the shape is eroded (grey erosion, 3x3), a systematic
      under-segmentation.
    - ``"sparse"``: only a random ``fraction`` (default U(0.1, 0.3)) of the pixels is known, exactly.
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise InputError(f"image must be 2D, got shape {img.shape}")
    h, w = img.shape
    if kind == "occlude":
        frac = float(rng.uniform(0.25, 0.5)) if fraction is None else float(fraction)
        if not 0 < frac < 1:
            raise InputError(f"fraction must be in (0, 1), got {frac}")
        aspect = rng.uniform(0.5, 2.0)
        rh = int(np.clip(round(np.sqrt(frac * h * w * aspect)), 1, h))
        rw = int(np.clip(round(frac * h * w / rh), 1, w))
        top = int(rng.integers(0, h - rh + 1))
        left = int(rng.integers(0, w - rw + 1))
        mask = np.ones((h, w), dtype=bool)
        mask[top : top + rh, left : left + rw] = False
        values = np.where(mask, img, 0.0)
    elif kind == "erode":
        mask = np.ones((h, w), dtype=bool)
        values = ndimage.grey_erosion(img, size=(3, 3), mode="constant", cval=0.0)
    elif kind == "sparse":
        frac = float(rng.uniform(0.1, 0.3)) if fraction is None else float(fraction)
        if not 0 < frac <= 1:
            raise InputError(f"fraction must be in (0, 1], got {frac}")
        mask = rng.random((h, w)) < frac
        values = np.where(mask, img, 0.0)
    else:
        raise InputError(f"unknown corruption kind {kind!r}; expected one of {DIGIT_CORRUPTIONS}")
    return values.astype(np.float32), mask
