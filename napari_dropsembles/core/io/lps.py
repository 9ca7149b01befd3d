"""RAS+ inside the package, LPS in DICOM, ITK, NRRD and Slicer files: the sign flip between them."""

from __future__ import annotations

import numpy as np

__all__ = [
    "LPS_TO_RAS",
    "flip_lps_ras",
]


LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse: also RAS -> LPS


def flip_lps_ras(affine: np.ndarray) -> np.ndarray:
    """An index -> LPS affine as index -> RAS, or the reverse (x and y change sign)."""
    return LPS_TO_RAS @ np.asarray(affine, dtype=float)
