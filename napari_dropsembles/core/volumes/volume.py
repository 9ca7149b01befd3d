"""A 3D array with its frame: voxel index -> world mm through a 4x4 affine.

Every grid that enters or leaves ``core`` is a :class:`Volume`. ``affine`` maps the
*centre* of voxel ``(i, j, k)`` to world millimetres (the NIfTI convention).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..config.errors import InputError


def affine_from_spacing(
    spacing_mm: tuple[float, float, float] | np.ndarray,
    origin_mm: tuple[float, float, float] | np.ndarray = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """Axis-aligned affine with the given voxel spacing and the world position of voxel 0."""
    affine = np.eye(4)
    affine[:3, :3] = np.diag(np.asarray(spacing_mm, dtype=float))
    affine[:3, 3] = np.asarray(origin_mm, dtype=float)
    return affine


def affine_problem(affine: np.ndarray) -> str | None:
    """What makes a voxel -> mm affine unusable, in a few words; None when it is fine."""
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4):
        return f"it must be 4x4, got shape {affine.shape}"
    if not np.all(np.isfinite(affine)):
        return "it holds NaN or infinite values"
    with np.errstate(all="ignore"):  # 1e300 entries overflow: refused below, with no warning printed
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        if np.any(~np.isfinite(spacing)) or np.any(spacing > 1e5):
            return f"the voxel spacing ({', '.join(f'{s:g}' for s in spacing)} mm) is implausibly large"
        if np.any(spacing < 1e-9):
            shown = ", ".join(f"{s:g}" for s in spacing)
            return f"the voxel spacing ({shown} mm) is zero along axis {int(np.argmin(spacing))}"
        if abs(np.linalg.det(affine[:3, :3] / spacing)) < 1e-6:
            return "its axes are parallel (a singular matrix)"
    return None


@dataclass(frozen=True, eq=False)
class Volume:
    """``data`` (I, J, K) with ``affine`` (4x4, index -> world mm)."""

    data: np.ndarray
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))

    def __post_init__(self) -> None:
        try:
            affine = np.asarray(self.affine, dtype=float)
        except (TypeError, ValueError):
            raise InputError(f"affine must be a 4x4 matrix of numbers, got {type(self.affine).__name__}") from None
        problem = affine_problem(affine)
        if problem is not None:
            raise InputError(f"the voxel -> mm affine is not usable: {problem}")
        object.__setattr__(self, "affine", affine)
        if np.ndim(self.data) != 3:
            raise InputError(f"expected a 3D volume, got {np.ndim(self.data)}D data of shape {np.shape(self.data)}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along each array axis (column norms of the affine)."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def origin(self) -> np.ndarray:
        """World position (mm) of the centre of voxel (0, 0, 0)."""
        return self.affine[:3, 3].copy()

    @property
    def is_axis_aligned(self) -> bool:
        """True when the affine is a pure per-axis scale plus translation."""
        rot = self.affine[:3, :3]
        return bool(np.allclose(rot, np.diag(np.diag(rot)), atol=1e-6) and np.all(np.diag(rot) > 0))

    def napari_frame(self) -> dict:
        """Keyword arguments that place this grid in napari's world (mm)."""
        if self.is_axis_aligned:
            return {"scale": tuple(self.spacing), "translate": tuple(self.origin)}
        return {"affine": self.affine.copy()}

    def with_data(self, data: np.ndarray) -> Volume:
        """Same frame, new data (must have the same shape)."""
        if data.shape != self.data.shape:
            raise InputError(f"shape {data.shape} does not match the grid {self.data.shape}")
        return Volume(data, self.affine)

    def index_to_world(self, index: np.ndarray) -> np.ndarray:
        """(N, 3) voxel indices (may be fractional) -> (N, 3) world mm."""
        index = np.asarray(index, dtype=float)
        return index @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_to_index(self, points_mm: np.ndarray) -> np.ndarray:
        """(N, 3) world mm -> (N, 3) fractional voxel indices."""
        inv = np.linalg.inv(self.affine)
        return np.asarray(points_mm, dtype=float) @ inv[:3, :3].T + inv[:3, 3]

    def voxel_centres_mm(self, mask: np.ndarray | None = None) -> np.ndarray:
        """World mm of all voxel centres (C order), or of those where ``mask`` is true."""
        index = np.indices(self.shape).reshape(3, -1).T if mask is None else np.argwhere(mask)
        return self.index_to_world(index)


THICK_AXIS_RATIO = 1.5  # an axis is "thick" when its spacing exceeds the finest by this factor


def thick_axis(spacing: np.ndarray) -> int | None:
    """The slice axis: the coarsest axis when it is thick, else None (a near-isotropic volume)."""
    spacing = np.asarray(spacing, dtype=float)
    axis = int(np.argmax(spacing))
    return axis if spacing[axis] > THICK_AXIS_RATIO * spacing.min() else None
