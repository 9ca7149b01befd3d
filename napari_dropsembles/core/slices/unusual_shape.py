"""How unlike the prior's training shapes an observation is: slice descriptors and a Mahalanobis distance.

Each labelled slice of the observation (along its slice axis) gives a few 2D descriptors: solidity
(area over convex-hull area), the number of pieces, whether it has a hole, compactness; with the
object's proportions (its extents, largest slice and volume relative to its largest extent) they make
one vector. None depends on the object's size: the network sees every shape scaled to its unit box.
Measured with sizes in the vector, held-out cervical vertebrae scored against a reference of thoracic
and lumbar ones looked almost as unusual as organs (AUROC 0.73); without them, 0.85 (docs/REAL.md).
The prior stores the mean and covariance of the vectors of its training observations
(:class:`ShapeReference`); an observation's score is its squared Mahalanobis distance to them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from ..config.errors import CheckpointError
from ..volumes.volume import Volume
from .slice_field import thick_axis

DESCRIPTORS = (
    "solidity",
    "least_solidity",
    "pieces",
    "holes",
    "log_compactness",
    "log_small_over_large_extent",
    "log_middle_over_large_extent",
    "log_largest_slice_over_large_extent2",
    "log_volume_over_large_extent3",
)
MIN_SLICE_VOXELS = 3
RIDGE = 1e-3  # added to the covariance's diagonal: a few training shapes still give an invertible one
PREFIX = "shape_reference"
UNUSUAL_QUANTILE = 0.99  # an observation is unusual past this quantile of the training observations' scores


def shape_descriptors(observation: Volume) -> np.ndarray | None:
    """The descriptor vector (:data:`DESCRIPTORS`) of a binary observation; None when no slice holds
    at least ``MIN_SLICE_VOXELS`` voxels."""
    from skimage.measure import euler_number  # scikit-image: slow to import, loaded when first used
    from skimage.morphology import convex_hull_image

    data = np.asarray(observation.data) > 0
    spacing = observation.spacing
    axis = thick_axis(spacing)
    axis = int(np.argmax(spacing)) if axis is None else axis
    pixel_mm2 = float(np.prod(np.delete(spacing, axis)))
    rows = []
    for s in np.flatnonzero(data.any(axis=tuple(a for a in range(3) if a != axis))):
        plane = np.take(data, s, axis=axis)
        area = int(plane.sum())
        if area < MIN_SLICE_VOXELS:
            continue
        labels, count = ndimage.label(plane)
        sizes = np.bincount(labels.ravel())[1:]
        pieces = int((sizes >= max(MIN_SLICE_VOXELS, 0.05 * area)).sum())
        holes = max(0, count - euler_number(plane, connectivity=2))
        edge = int((plane & ~ndimage.binary_erosion(plane)).sum())
        rows.append(
            (area / max(int(convex_hull_image(plane).sum()), 1), pieces, holes > 0, edge**2 / (4 * np.pi * area), area)
        )
    if not rows:
        return None
    solidity, pieces, holed, compactness, area = (np.asarray(c, dtype=float) for c in zip(*rows, strict=True))
    weight = area / area.sum()
    index = np.argwhere(data)
    small, middle, large = np.log(np.sort((index.max(0) - index.min(0) + 1) * spacing))
    volume_mm3 = area.sum() * pixel_mm2 * float(spacing[axis])
    return np.array(
        [
            (weight * solidity).sum(),
            solidity.min(),
            (weight * pieces).sum(),
            (weight * holed).sum(),
            np.log((weight * compactness).sum()),
            small - large,
            middle - large,
            np.log(area.max() * pixel_mm2) - 2 * large,
            np.log(volume_mm3) - 3 * large,
        ]
    )


@dataclass(frozen=True, eq=False)
class ShapeReference:
    """The descriptors of a prior's training observations: mean, inverse covariance, the score quantile
    past which a shape is called unusual, and where they came from."""

    mean: np.ndarray
    inverse_covariance: np.ndarray
    threshold: float
    count: int
    provenance: dict = field(default_factory=dict)

    @classmethod
    def fit(cls, vectors: Iterable[np.ndarray], provenance: dict | None = None) -> ShapeReference:
        matrix = np.array([v for v in vectors if v is not None], dtype=float)
        if len(matrix) < len(DESCRIPTORS) + 2:
            raise ValueError(f"a shape reference needs at least {len(DESCRIPTORS) + 2} observations, got {len(matrix)}")
        mean = matrix.mean(0)
        covariance = np.cov(matrix.T) + RIDGE * np.eye(matrix.shape[1])
        inverse = np.linalg.inv(covariance)
        centred = matrix - mean
        scores = np.einsum("ij,jk,ik->i", centred, inverse, centred)
        return cls(mean, inverse, float(np.quantile(scores, UNUSUAL_QUANTILE)), len(matrix), dict(provenance or {}))

    def score(self, observation: Volume) -> float | None:
        """Squared Mahalanobis distance of the observation's descriptors (None: nothing to describe)."""
        vector = shape_descriptors(observation)
        if vector is None:
            return None
        centred = vector - self.mean
        return float(centred @ self.inverse_covariance @ centred)

    def assess(self, observation: Volume) -> dict:
        """``{"score", "threshold", "unusual"}`` for report.json and the front ends."""
        score = self.score(observation)
        return {
            "score": None if score is None else round(score, 2),
            "threshold": round(self.threshold, 2),
            "unusual": bool(score is not None and score > self.threshold),
        }

    def to_file(self) -> tuple[dict[str, torch.Tensor], str]:
        """Tensors ``shape_reference.{mean,inverse_covariance}`` and the metadata JSON."""
        tensors = {
            f"{PREFIX}.mean": torch.from_numpy(np.asarray(self.mean, dtype=np.float64)),
            f"{PREFIX}.inverse_covariance": torch.from_numpy(np.asarray(self.inverse_covariance, dtype=np.float64)),
        }
        meta = {"descriptors": list(DESCRIPTORS), "threshold": self.threshold, "count": self.count}
        return tensors, json.dumps({**meta, "provenance": self.provenance})

    @classmethod
    def from_file(cls, tensors: dict[str, torch.Tensor], metadata: str, where: str) -> ShapeReference:
        try:
            meta = json.loads(metadata)
            threshold, count = float(meta["threshold"]), int(meta["count"])
            names = list(meta["descriptors"])
            mean = tensors[f"{PREFIX}.mean"].double().numpy()
            inverse = tensors[f"{PREFIX}.inverse_covariance"].double().numpy()
        except (ValueError, KeyError, TypeError) as error:
            raise CheckpointError(f"{where}: its shape reference is not readable ({error})") from None
        n = len(DESCRIPTORS)
        if names != list(DESCRIPTORS) or mean.shape != (n,) or inverse.shape != (n, n):
            raise CheckpointError(f"{where}: its shape reference describes other descriptors than this version's")
        if not (np.isfinite(mean).all() and np.isfinite(inverse).all() and np.isfinite(threshold)):
            raise CheckpointError(f"{where}: its shape reference has NaN/inf values")
        return cls(mean, inverse, threshold, count, dict(meta.get("provenance", {})))
