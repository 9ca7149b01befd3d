"""What an input volume is (a mask, a label map or an intensity image) and how to turn it into masks.

A front end asks this before it offers choices: label lists come from label maps (a Labels
layer, or a small set of non-negative whole numbers), an intensity image (a CT, an MRI) goes
the threshold path with a default level, and an input that cannot be used says why.
The decision reads a subsample, so it stays quick on large scans.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

MAX_LABELS = 64  # more distinct values than this is not a label map a person drew
SAMPLE_VALUES = 1_000_000  # values read to decide the kind and the default level
HOUNSFIELD_BONE = 200.0  # default level on CT-like data: cortical and trabecular bone
Kind = Literal["mask", "labels", "intensity", "unusable"]


@dataclass(frozen=True)
class InputKind:
    """The kind of an input volume, its labels (label maps), default level (intensity) or why it is unusable."""

    kind: Kind
    labels: tuple[int, ...] = ()
    level: float | None = None  # default threshold of an intensity image
    level_reason: str = ""  # how the default level was chosen ("Otsu", "bone (CT)")
    reason: str = ""  # why the volume cannot be used (kind == "unusable")
    value_range: tuple[float, float] = (0.0, 0.0)

    @property
    def usable(self) -> bool:
        return self.kind != "unusable"


def _sample(data: np.ndarray, values: int | None = SAMPLE_VALUES) -> np.ndarray:
    flat = np.asarray(data).reshape(-1)
    return flat if values is None else flat[:: max(1, flat.size // values)]


def whole_numbers(data: np.ndarray, sample_values: int | None = SAMPLE_VALUES) -> bool:
    """True for booleans, integers and floats holding whole numbers only (read on a subsample)."""
    data = np.asarray(data)
    if data.dtype.kind in "biu":
        return True
    values = _sample(data, sample_values)
    return bool(np.all(np.isfinite(values))) and bool(np.array_equal(values, np.round(values)))


def is_label_map(data: np.ndarray, max_labels: int | None = MAX_LABELS, sample_values: int | None = None) -> bool:
    """The one answer to "is this a label map?": non-negative whole numbers (booleans too) with at most
    ``max_labels`` non-zero labels (None: any number), read on a subsample of ``sample_values`` values
    (None: every voxel). A CT in Hounsfield units is an intensity image, not 1,300 labels."""
    data = np.asarray(data)
    if data.dtype == np.bool_:
        return True
    values = _sample(data, sample_values)
    if not values.size or not whole_numbers(values, None) or float(values.min()) < 0:
        return False
    if max_labels is None:
        return True
    return len(labels_of(values if values.dtype.kind != "f" else values.astype(np.int64))) <= max_labels


def intensity_level(data: np.ndarray) -> tuple[float, str]:
    """A default threshold for an intensity image: bone on CT (Hounsfield units), else Otsu's level."""
    values = _sample(np.asarray(data)).astype(np.float64)
    values = values[np.isfinite(values)]
    if not values.size:
        return 0.0, "no finite values"
    lo, hi = float(values.min()), float(values.max())
    if lo <= -900 and hi >= 1000:
        return HOUNSFIELD_BONE, "bone in Hounsfield units"
    if lo == hi:
        return lo, "constant image"
    from skimage.filters import threshold_otsu  # scikit-image: slow to import, loaded when first used

    return float(threshold_otsu(values)), "Otsu"


def labels_of(data: np.ndarray) -> tuple[int, ...]:
    """Sorted non-zero labels of a label map (whole numbers)."""
    if data.dtype == np.bool_:
        return (1,) if data.any() else ()
    if data.dtype.kind in "iu" and data.size and data.min() >= 0 and data.max() < 65536:
        counts = np.bincount(data.reshape(-1).astype(np.int64, copy=False))
        return tuple(int(v) for v in np.flatnonzero(counts) if v)
    return tuple(int(v) for v in np.unique(data) if v)


def classify_volume(data: np.ndarray, *, labels_layer: bool = False) -> InputKind:
    """Decide how a 3D volume can be reconstructed; ``labels_layer``: the user already said it is a label map."""
    data = np.asarray(data)
    if data.ndim != 3:
        return InputKind(
            "unusable", reason=f"it holds {data.ndim}D data of shape {tuple(data.shape)}; one 3D volume is needed"
        )
    if data.size == 0:
        return InputKind("unusable", reason="it is empty")
    if data.dtype.kind not in "biuf":
        return InputKind("unusable", reason=f"its data type {data.dtype} is not numeric")
    if data.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            return InputKind("unusable", reason=f"it contains {bad} NaN/inf values; fix or mask them first")
    sample = _sample(data)
    value_range = (float(sample.min()), float(sample.max()))
    label_like = is_label_map(sample, None if labels_layer else MAX_LABELS)
    if not label_like:
        if labels_layer and value_range[0] != value_range[1]:
            return InputKind(
                "unusable", value_range=value_range, reason="a Labels layer needs non-negative whole-number labels"
            )
        level, why = intensity_level(data)
        return InputKind("intensity", level=level, level_reason=why, value_range=value_range)
    labels = labels_of(data if data.dtype.kind != "f" else data.astype(np.int64))
    value_range = (0.0, float(max(labels, default=0)))
    if not labels:
        return InputKind("unusable", value_range=value_range, reason="it is empty: no labelled voxel")
    if len(labels) == 1:
        return InputKind("mask", labels=labels, value_range=value_range)
    return InputKind("labels", labels=labels, value_range=value_range)


def mask_share(data: np.ndarray, level: float) -> float:
    """Share of the volume at or above ``level`` (on a subsample)."""
    sample = _sample(np.asarray(data))
    return float(np.count_nonzero(sample >= level)) / max(sample.size, 1)
