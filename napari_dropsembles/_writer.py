"""npe2 writers: Surface layers to PLY/OBJ/STL, Image and Labels layers to NIfTI (world mm kept)."""

from __future__ import annotations

import numpy as np

from .core.io import write_volume
from .core.mesh import Mesh, write_mesh
from .core.volume import Volume, affine_from_spacing


def layer_affine(meta: dict) -> np.ndarray:
    """index -> world mm of a layer from its scale/translate (or a stored affine)."""
    stored = (meta.get("metadata") or {}).get("affine")
    scale = np.asarray(meta.get("scale", (1.0, 1.0, 1.0)), dtype=float)[-3:]
    translate = np.asarray(meta.get("translate", (0.0, 0.0, 0.0)), dtype=float)[-3:]
    if stored is not None:
        stored = np.asarray(stored, dtype=float)
        if np.allclose(np.linalg.norm(stored[:3, :3], axis=0), scale) and np.allclose(stored[:3, 3], translate):
            return stored
    return affine_from_spacing(scale, translate)


def write_surface(path: str, data, meta: dict) -> list[str]:
    vertices, faces = np.asarray(data[0]), np.asarray(data[1])
    values = np.asarray(data[2]) if len(data) > 2 else None
    scale = np.asarray(meta.get("scale", (1.0, 1.0, 1.0)), dtype=float)[-3:]
    translate = np.asarray(meta.get("translate", (0.0, 0.0, 0.0)), dtype=float)[-3:]
    mesh = Mesh(vertices_mm=vertices[:, -3:] * scale + translate, faces=faces, vertex_values=values)
    return [str(write_mesh(path, mesh))]


def write_image(path: str, data, meta: dict) -> list[str]:
    array = np.asarray(data)
    dtype = np.float32 if np.issubdtype(array.dtype, np.floating) else array.dtype
    return [str(write_volume(path, Volume(array, layer_affine(meta)), dtype=dtype))]
