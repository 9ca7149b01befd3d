"""Binary masks from a label map or an image: which labels a volume holds, one label's mask, checks."""

from __future__ import annotations

import numpy as np

from ..config.errors import InputError, setting
from .input_kind import intensity_level, is_label_map, whole_numbers
from .volume import Volume


def structure_masks(volume: Volume, labels: list[int] | None = None) -> dict[int, Volume]:
    """One binary mask per label of a label volume (all its non-zero labels when ``labels`` is None)."""
    labels = list_labels(volume) if labels is None else [int(v) for v in labels]
    if not labels:
        raise InputError("the volume holds no label (all voxels are 0)")
    return {label: binary_mask_from_volume(volume, label=label) for label in labels}


# --------------------------------------------------------------------------- masks


def list_labels(volume: Volume) -> list[int]:
    """Sorted non-zero integer labels of ``volume`` ([] for non-integer float data)."""
    data = np.asarray(volume.data)
    if data.dtype.kind == "f":
        finite = data[np.isfinite(data)]
        if not whole_numbers(finite, None):
            return []
        data = finite
    if data.dtype == np.bool_:
        return [1] if data.any() else []
    if data.dtype.kind == "u" and data.dtype.itemsize <= 2:
        counts = np.bincount(data.ravel())
        return [int(v) for v in np.flatnonzero(counts) if v != 0]
    values = np.unique(data)
    return [int(v) for v in values if v != 0]


def _parse_label(label: int | str) -> int | str:
    if isinstance(label, (bool, np.bool_)):
        raise InputError(f"label must be an integer or 'all', got {label!r}")
    if isinstance(label, (int, np.integer)):
        return int(label)
    if isinstance(label, str):
        text = label.strip().lower()
        if text == "all":
            return "all"
        try:
            return int(text)
        except ValueError:
            pass
    raise InputError(f"label must be an integer or 'all', got {label!r}")


def check_binary_mask(observation: object) -> Volume:
    """The boundary of the reconstruction API: a :class:`Volume` of finite 0/1 values (bool or numbers)."""
    if not isinstance(observation, Volume):
        raise InputError(
            f"the observation must be a Volume (data + affine), got {type(observation).__name__}; "
            "read one with read_volume(path) or wrap an array as Volume(array, affine)"
        )
    data = np.asarray(observation.data)
    if data.dtype.kind not in "biuf":
        raise InputError(f"the observation holds {data.dtype}, not numbers; pass a 0/1 mask")
    if data.dtype != np.bool_ and not np.all((data == 0) | (data == 1)):
        raise InputError(
            "the observation is not a 0/1 mask (it holds NaN, labels or fractional values); make one with "
            "binary_mask_from_volume(volume, label=..., threshold=...)"
        )
    return observation


def binary_mask_from_volume(
    volume: Volume, *, label: int | str | None = None, threshold: float | None = None
) -> Volume:
    """A uint8 0/1 mask (same affine) from a binary, label or probability volume.

    - NaN/inf anywhere: error.
    - ``threshold`` given: ``data >= threshold`` (any dtype). It cannot be combined with ``label``.
    - ``label`` given: ``data == label``, or ``data != 0`` for ``label='all'``.
    - otherwise: binary data (bool, values in {0, 1}, or one non-zero value such as {0, 255}) is
      used as is; integer-valued data with several labels needs ``label``; other float data
      needs ``threshold``.
    Float data holding only whole numbers (label maps saved as float) count as labels.
    The result must be neither empty nor fill the whole volume.
    """
    data = np.asarray(volume.data)
    if data.dtype.kind not in "biuf":
        raise InputError(f"unsupported data type {data.dtype} (expected numbers or booleans)")
    if data.dtype.kind == "f":
        n_bad = int(np.count_nonzero(~np.isfinite(data)))
        if n_bad:
            raise InputError(f"the volume contains {n_bad} NaN/inf values; fix or mask them before reconstruction")
    if label is not None and threshold is not None:
        raise InputError(
            f"pass either a label ({setting('label')}) or a threshold ({setting('input_threshold')}), not both"
        )

    if threshold is not None:
        try:
            t = float(threshold)
        except (TypeError, ValueError) as exc:
            raise InputError(f"threshold must be a number, got {threshold!r}") from exc
        if not np.isfinite(t):
            raise InputError(f"threshold must be a finite number, got {threshold!r}")
        mask = data >= t
        how = f"threshold {t:g}"
    elif label is not None:
        lab = _parse_label(label)
        if lab == "all":
            mask = data != 0
            how = "label 'all'"
        else:
            mask = data == lab
            how = f"label {lab}"
            if not mask.any():
                found = list_labels(volume)
                raise InputError(f"label {lab} is not in the volume; labels found: {found or 'none'}")
    else:
        if data.dtype == np.bool_:
            mask = data
            how = "binary data"
        elif data.dtype.kind in "iuf" and is_label_map(data):
            labels = list_labels(volume)
            if len(labels) <= 1:  # {0, 1}, or one label such as {0, 255}
                mask = data != 0
                how = "binary data"
            else:
                shown = labels if len(labels) <= 20 else [*labels[:20], "..."]
                raise InputError(
                    f"the volume has several labels {shown}; choose one with {setting('label', 'N')} "
                    f"(e.g. {setting('label', labels[0])}), merge them with {setting('label', 'all')}, "
                    f"or pass {setting('input_threshold', 'T')}"
                )
        else:
            lo, hi = float(data.min()), float(data.max())
            level, why = intensity_level(data)
            raise InputError(
                f"the volume holds intensities in [{lo:g}, {hi:g}], not a mask or a label map; "
                f"pass {setting('input_threshold', 'T')} (voxels >= T become the object), "
                f"e.g. {setting('input_threshold', f'{level:g}')} ({why})"
            )

    mask = np.asarray(mask, dtype=np.uint8)
    n = int(mask.sum())
    if n == 0:
        raise InputError(
            f"the mask is empty (no voxel selected by {how}); check the file, {setting('label')} or "
            f"{setting('input_threshold')}"
        )
    if n == mask.size:
        raise InputError(
            f"the mask fills the whole volume ({how} selects every voxel); "
            f"check {setting('label')} or {setting('input_threshold')}, or pad the volume with background"
        )
    return Volume(mask, volume.affine)
