"""Surface meshes in world mm: marching cubes on a grid, per-vertex values, PLY/OBJ/STL IO."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .io import atomic_path
from .volume import Volume

MESH_SUFFIXES = (".ply", ".obj", ".stl")


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


def sample_volume(values: Volume, points_mm: np.ndarray) -> np.ndarray:
    """Trilinear sample of ``values`` at world points (nearest edge value outside the grid)."""
    from scipy.ndimage import map_coordinates

    index = values.world_to_index(np.asarray(points_mm, dtype=float).reshape(-1, 3))
    return map_coordinates(np.asarray(values.data, dtype=np.float32), index.T, order=1, mode="nearest")


def extract_mesh(volume: Volume, threshold: float = 0.5, values: Volume | None = None, *, step_size: int = 1) -> Mesh:
    """Marching cubes of ``volume`` at ``threshold``; vertices in world mm, normals outward.

    The grid is padded by one voxel of its lowest value so that surfaces touching the border
    are closed. ``values`` (any grid; resampled by world coordinates when it differs) gives
    ``vertex_values`` by trilinear interpolation. A level outside the data range gives an
    empty mesh.
    """
    from scipy.ndimage import map_coordinates
    from skimage.measure import marching_cubes

    data = np.asarray(volume.data, dtype=np.float32)
    finite = np.isfinite(data)
    if not finite.any():
        return _empty_mesh(values is not None)
    lo, hi = float(data[finite].min()), float(data[finite].max())
    threshold = float(threshold)
    if not (lo < threshold < hi):
        return _empty_mesh(values is not None)
    if not finite.all():
        data = np.where(finite, data, lo)
    padded = np.pad(data, 1, mode="constant", constant_values=lo)
    try:
        verts, faces, _normals, _vals = marching_cubes(
            padded, level=threshold, step_size=max(1, int(step_size)), allow_degenerate=False
        )
    except (ValueError, RuntimeError):
        return _empty_mesh(values is not None)
    if len(faces) == 0:
        return _empty_mesh(values is not None)
    index = verts.astype(np.float64) - 1.0
    vertices_mm = volume.index_to_world(index)
    faces = faces.astype(np.int32)
    if _signed_volume(vertices_mm, faces) < 0:
        faces = faces[:, ::-1].copy()

    vertex_values = None
    if values is not None:
        same_grid = values.shape == volume.shape and np.allclose(values.affine, volume.affine, atol=1e-6)
        if same_grid:
            vertex_values = map_coordinates(np.asarray(values.data, dtype=np.float32), index.T, order=1, mode="nearest")
        else:
            vertex_values = sample_volume(values, vertices_mm)
    return Mesh(vertices_mm.astype(np.float32), faces, vertex_values)


# --------------------------------------------------------------------------- files


def _ply_bytes(mesh: Mesh) -> bytes:
    has_values = mesh.vertex_values is not None
    header = [
        "ply",
        "format binary_little_endian 1.0",
        "comment napari-dropsembles mesh, vertices in world mm",
        f"element vertex {len(mesh.vertices_mm)}",
        "property float x",
        "property float y",
        "property float z",
    ]
    vfields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if has_values:
        header.append("property float quality")
        vfields.append(("quality", "<f4"))
    header += [f"element face {len(mesh.faces)}", "property list uchar int vertex_indices", "end_header"]
    vertex = np.empty(len(mesh.vertices_mm), dtype=vfields)
    vertex["x"], vertex["y"], vertex["z"] = mesh.vertices_mm.T
    if has_values:
        vertex["quality"] = mesh.vertex_values
    face = np.empty(len(mesh.faces), dtype=[("n", "u1"), ("v", "<i4", (3,))])
    face["n"] = 3
    face["v"] = mesh.faces
    return ("\n".join(header) + "\n").encode("ascii") + vertex.tobytes() + face.tobytes()


def write_mesh(path: str | os.PathLike, mesh: Mesh) -> Path:
    """Write ``mesh`` atomically as binary PLY (vertex values as property 'quality'), OBJ or STL."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise InputError(f"{path}: unknown mesh file type; expected one of {', '.join(MESH_SUFFIXES)}")
    if mesh.is_empty:
        raise InputError(f"{path}: the mesh is empty (no surface at this threshold); nothing to write")
    with atomic_path(path) as tmp:
        if suffix == ".ply":
            with open(tmp, "wb") as fh:
                fh.write(_ply_bytes(mesh))
        else:
            import trimesh

            tm = trimesh.Trimesh(vertices=mesh.vertices_mm, faces=mesh.faces, process=False)
            tm.export(str(tmp), file_type=suffix[1:])
    return path


def read_mesh(path: str | os.PathLike) -> Mesh:
    """Read a PLY/OBJ/STL mesh (vertex values from the PLY property 'quality' when present)."""
    import trimesh

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise InputError(f"{path}: unknown mesh file type; expected one of {', '.join(MESH_SUFFIXES)}")
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        tm = trimesh.load(str(path), file_type=suffix[1:], process=suffix == ".stl", force="mesh")
    except Exception as exc:
        raise InputError(f"{path}: not a readable mesh ({type(exc).__name__}: {exc})") from exc
    if not isinstance(tm, trimesh.Trimesh) or len(tm.faces) == 0:
        raise InputError(f"{path}: the file holds no triangles")
    values = None
    if suffix == ".ply":
        attrs = getattr(tm, "vertex_attributes", {}) or {}
        if "quality" in attrs:
            values = np.asarray(attrs["quality"])
        else:
            raw = (tm.metadata or {}).get("_ply_raw") or {}
            vdata = raw.get("vertex", {}).get("data") if isinstance(raw, dict) else None
            if vdata is not None and vdata.dtype.names and "quality" in vdata.dtype.names:
                values = np.asarray(vdata["quality"]).reshape(-1)
        if values is not None and len(values) != len(tm.vertices):
            values = None
    return Mesh(np.asarray(tm.vertices), np.asarray(tm.faces), values)
