"""npe2 writers: Surface layers to PLY/OBJ/STL (napari's RAS world mm, as before, tagged SPACE=RAS) and
to VTP/VTK/GLB (LPS mm, 3D Slicer's convention, tagged SPACE=LPS, variance as point data); Image and
Labels layers to NIfTI, NRRD, MetaImage or OME-Zarr, Labels also to a Slicer .seg.nrrd keeping the
layer's label names and colours.

napari hands writers the layer's state; its transform (scale, translate, rotate, shear, affine)
is turned into the voxel -> world mm affine exactly as the Reconstruct widget reads layers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from ._gui.layers import world_affine_from_state
from .core.config.errors import DropsemblesError
from .core.io.meshes import write_mesh_file
from .core.io.messages import describe_fault
from .core.io.segments import Segment
from .core.io.volumes import write_volume
from .core.volumes.mesh import Mesh
from .core.volumes.volume import Volume


def _one_line_faults(writer: Callable[[str, object, dict], list[str]]) -> Callable[[str, object, dict], list[str]]:
    """A full disk, a size limit or no memory while saving from the viewer: napari shows one line that
    says what to do (the files are written atomically, so nothing half-written is left)."""

    @functools.wraps(writer)
    def guarded(path: str, data, meta: dict) -> list[str]:
        try:
            return writer(path, data, meta)
        except (DropsemblesError, WriteFault):
            raise
        except (OSError, MemoryError) as error:
            raise WriteFault(describe_fault(error)) from None

    return guarded


class WriteFault(OSError):
    """A write from the viewer failed; the message is the one line to show."""


def layer_affine(meta: dict) -> np.ndarray:
    """index -> world mm (4x4) of a layer from its state."""
    return world_affine_from_state(meta)


def _surface_mesh(data, meta: dict) -> Mesh:
    vertices, faces = np.asarray(data[0], dtype=float), np.asarray(data[1])
    values = np.asarray(data[2]) if len(data) > 2 else None
    if values is not None and values.ndim > 1:  # napari allows a stack of value sets: keep the first
        values = values.reshape(-1, len(vertices))[0]
    affine = layer_affine(meta)
    vertices_mm = vertices[:, -3:] @ affine[:3, :3].T + affine[:3, 3]
    return Mesh(vertices_mm=vertices_mm, faces=faces, vertex_values=values)


@_one_line_faults
def write_surface(path: str, data, meta: dict) -> list[str]:
    """PLY/OBJ/STL in napari's world (RAS mm for volumes read by this plugin), stated as ``SPACE=RAS`` in
    the PLY/OBJ comment or STL header; vertex values as PLY properties 'variance' and 'quality'."""
    return [str(write_mesh_file(path, _surface_mesh(data, meta), space="RAS"))]


@_one_line_faults
def write_surface_lps(path: str, data, meta: dict) -> list[str]:
    """VTP/VTK/GLB in LPS mm (what 3D Slicer opens in place), vertex values as point data 'variance'."""
    return [str(write_mesh_file(path, _surface_mesh(data, meta), space="LPS"))]


@_one_line_faults
def write_image(path: str, data, meta: dict) -> list[str]:
    array = np.asarray(data)
    dtype = np.float32 if np.issubdtype(array.dtype, np.floating) else array.dtype
    return [str(write_volume(path, Volume(array, layer_affine(meta)), dtype=dtype))]


def _segments(array: np.ndarray, meta: dict) -> tuple[Segment, ...]:
    """One segment per label present, named and coloured from the layer (metadata 'label_names', colormap)."""
    names = {int(k): str(v) for k, v in dict((meta.get("metadata") or {}).get("label_names", {}) or {}).items()}
    colormap = meta.get("colormap")
    colors = getattr(colormap, "color_dict", None) or {}
    segments = []
    for label in (int(v) for v in np.unique(array) if v != 0):
        rgba = colors.get(label)
        rgb = tuple(float(c) for c in np.asarray(rgba, dtype=float)[:3]) if rgba is not None else None
        segments.append(Segment(label, names.get(label, f"label {label}"), rgb))
    return tuple(segments)


@_one_line_faults
def write_labels(path: str, data, meta: dict) -> list[str]:
    """Labels as NIfTI/NRRD/MetaImage, or a Slicer .seg.nrrd with the layer's names and colours."""
    if not str(path).lower().endswith(".seg.nrrd"):
        return write_image(path, data, meta)
    from .core.io.nrrd import write_seg_nrrd

    array = np.asarray(data)
    return [str(write_seg_nrrd(path, Volume(array, layer_affine(meta)), _segments(array, meta)))]
