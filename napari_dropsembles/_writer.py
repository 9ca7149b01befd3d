"""npe2 writers: Surface layers to PLY/OBJ/STL, Image and Labels layers to NIfTI (world mm kept).

napari hands writers the layer's state; its transform (scale, translate, rotate, shear, affine)
is turned into the voxel -> world mm affine exactly as the Reconstruct widget reads layers.
"""

from __future__ import annotations

import numpy as np

from ._gui.layers import world_affine_from_state
from .core.io import write_volume
from .core.mesh import Mesh, write_mesh
from .core.volume import Volume


def layer_affine(meta: dict) -> np.ndarray:
    """index -> world mm (4x4) of a layer from its state."""
    return world_affine_from_state(meta)


def write_surface(path: str, data, meta: dict) -> list[str]:
    vertices, faces = np.asarray(data[0], dtype=float), np.asarray(data[1])
    values = np.asarray(data[2]) if len(data) > 2 else None
    if values is not None and values.ndim > 1:  # napari allows a stack of value sets: keep the first
        values = values.reshape(-1, len(vertices))[0]
    affine = layer_affine(meta)
    vertices_mm = vertices[:, -3:] @ affine[:3, :3].T + affine[:3, 3]
    return [str(write_mesh(path, Mesh(vertices_mm=vertices_mm, faces=faces, vertex_values=values)))]


def write_image(path: str, data, meta: dict) -> list[str]:
    array = np.asarray(data)
    dtype = np.float32 if np.issubdtype(array.dtype, np.floating) else array.dtype
    return [str(write_volume(path, Volume(array, layer_affine(meta)), dtype=dtype))]
