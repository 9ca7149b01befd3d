"""A triangle mesh in world mm (vertices, faces, optional per-vertex values)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config.errors import InputError


@dataclass(frozen=True, eq=False)
class Mesh:
    """Triangle mesh: ``vertices_mm`` (V, 3) world mm, ``faces`` (F, 3), optional ``vertex_values`` (V,)."""

    vertices_mm: np.ndarray
    faces: np.ndarray
    vertex_values: np.ndarray | None = None

    def __post_init__(self) -> None:
        v = np.asarray(self.vertices_mm, dtype=np.float32).reshape(-1, 3)
        f = np.asarray(self.faces, dtype=np.int32).reshape(-1, 3)
        if f.size and (f.min() < 0 or f.max() >= len(v)):
            raise InputError(f"mesh faces index vertices outside [0, {len(v)})")
        object.__setattr__(self, "vertices_mm", v)
        object.__setattr__(self, "faces", f)
        if self.vertex_values is not None:
            vals = np.asarray(self.vertex_values, dtype=np.float32).reshape(-1)
            if vals.shape != (len(v),):
                raise InputError(f"vertex_values must have one value per vertex ({len(v)}), got {vals.shape}")
            object.__setattr__(self, "vertex_values", vals)

    @property
    def is_empty(self) -> bool:
        return len(self.vertices_mm) == 0 or len(self.faces) == 0

    def napari_data(self) -> tuple:
        """``(vertices, faces)`` or ``(vertices, faces, values)`` for a napari Surface layer (world mm)."""
        if self.vertex_values is None:
            return (self.vertices_mm, self.faces)
        return (self.vertices_mm, self.faces, self.vertex_values)

    def signed_volume_mm3(self) -> float:
        """Signed enclosed volume (positive when the normals point outward of a closed mesh)."""
        return _signed_volume(self.vertices_mm.astype(np.float64), self.faces)


def _empty_mesh(with_values: bool) -> Mesh:
    return Mesh(
        np.zeros((0, 3), np.float32),
        np.zeros((0, 3), np.int32),
        np.zeros(0, np.float32) if with_values else None,
    )


def _signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    if len(faces) == 0:
        return 0.0
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)
