"""Thick-slice observations made from dense masks: keep every k-th slice along one axis.

This is how the real-anatomy benchmark and the tests turn a dense segmentation into the kind of
input a thick-slice scan gives: the kept slices keep their in-plane voxels, the slice spacing
grows k times, and the world geometry is unchanged (the affine moves with the kept slices).
"""

from __future__ import annotations

import numpy as np

from ..config.errors import InputError
from ..volumes.volume import Volume


def keep_every_kth_slice(dense: Volume, factor: int, axis: int, offset: int = 0) -> Volume:
    """Slices ``offset, offset + factor, ...`` of ``dense`` along ``axis``, with spacing ``factor`` times larger."""
    if not isinstance(factor, (int, np.integer)) or factor < 1:
        raise InputError(f"slice factor must be a positive integer, got {factor!r}")
    if axis not in (0, 1, 2):
        raise InputError(f"slice axis must be 0, 1 or 2, got {axis!r}")
    if not 0 <= offset < min(factor, dense.shape[axis]):
        raise InputError(f"slice offset must be in [0, {factor}), got {offset!r}")
    kept = np.take(np.asarray(dense.data), np.arange(offset, dense.shape[axis], factor), axis=axis)
    affine = np.array(dense.affine, dtype=float)
    affine[:3, 3] = affine[:3, 3] + affine[:3, axis] * offset
    affine[:3, axis] = affine[:3, axis] * factor
    return Volume(np.ascontiguousarray(kept), affine)


def crop_to_mask(volume: Volume, margin_voxels: int = 3) -> Volume:
    """The box of the non-zero voxels plus ``margin_voxels`` (clipped to the volume), same world frame."""
    mask = np.asarray(volume.data) > 0
    if not mask.any():
        raise InputError("the mask is empty: nothing to crop to")
    index = np.argwhere(mask)
    lo = np.maximum(index.min(0) - margin_voxels, 0)
    hi = np.minimum(index.max(0) + margin_voxels + 1, np.array(volume.shape))
    data = np.asarray(volume.data)[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    affine = np.array(volume.affine, dtype=float)
    affine[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    return Volume(np.ascontiguousarray(data), affine)
