"""Meshes for clinical viewers: ``.vtp``/``.vtk`` (vtk, values as point data), ``.ply``, ``.obj``,
``.stl``, ``.glb`` (trimesh), in LPS millimetres by default.

3D Slicer (4.11 and later) reads and writes model files in LPS and marks them ``SPACE=LPS``;
so do these writers, wherever the format has a place for it (VTK legacy header, VTP field data
``SPACE``, STL header, PLY and OBJ comments, the glTF mesh's ``extras``), and ``SPACE=RAS`` the
same way for a mesh written in RAS. Reading, the stated space is honoured (a file stating none is
taken as LPS, as Slicer does). Meshes inside the package are in RAS (see :mod:`..formats`): x and y
change sign on the way out and back in. The per-vertex values (the ensemble variance) are kept as
point data ``variance`` in ``.vtp``/``.vtk``, as vertex properties ``variance`` and ``quality`` in
``.ply`` and as the vertex attribute ``_variance`` in ``.glb``; ``.obj`` and ``.stl`` hold the
geometry only.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..config.errors import InputError
from ..volumes.mesh import Mesh
from .atomic import atomic_path
from .messages import one_line

MESH_SUFFIXES = (".ply", ".obj", ".stl")


# --------------------------------------------------------------------------- files


def _ply_bytes(mesh: Mesh) -> bytes:
    has_values = mesh.vertex_values is not None
    header = [
        "ply",
        "format binary_little_endian 1.0",
        "comment napari-dropsembles mesh, vertices in world mm",
        "comment SPACE=RAS",  # the volumes' world frame (NIfTI's RAS), stated as core/formats/mesh_io reads it
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
            import trimesh  # trimesh: slow to import, loaded when a mesh file is read or written

            tm = trimesh.Trimesh(vertices=mesh.vertices_mm, faces=mesh.faces, process=False)
            tm.export(str(tmp), file_type=suffix[1:])
    return path


def read_mesh(path: str | os.PathLike) -> Mesh:
    """Read a PLY/OBJ/STL mesh (vertex values from the PLY property 'quality' when present)."""
    import trimesh  # trimesh: slow to import, loaded when a mesh file is read or written

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


MESH_FORMAT_SUFFIXES = (".vtp", ".vtk", ".ply", ".obj", ".stl", ".glb")
VALUES_NAME = "variance"
SPACES = ("LPS", "RAS")
_VTK_HINT = "pip install 'napari-dropsembles[vtk]'"


def _to_space(points_ras: np.ndarray, space: str) -> np.ndarray:
    points = np.asarray(points_ras, dtype=np.float64).copy()
    if space == "LPS":
        points[:, :2] *= -1.0
    return points


def _check_space(space: str) -> str:
    space = str(space).upper()
    if space not in SPACES:
        raise InputError(f"mesh coordinate system must be LPS or RAS, got {space!r}")
    return space


def mesh_suffix(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in MESH_FORMAT_SUFFIXES:
        raise InputError(f"{path}: unknown mesh file type; expected one of {', '.join(MESH_FORMAT_SUFFIXES)}")
    return suffix


def _vtk():
    """The few VTK classes used here (its modules, not the whole ``vtk`` package: about 1 s less to import).

    vtk is optional and heavy: imported here, when a VTP/VTK mesh is read or written."""
    try:
        from vtkmodules.util import numpy_support
        from vtkmodules.vtkCommonCore import vtkObject, vtkPoints, vtkStringArray
        from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData
        from vtkmodules.vtkFiltersCore import vtkTriangleFilter
        from vtkmodules.vtkIOGeometry import vtkSTLWriter
        from vtkmodules.vtkIOLegacy import vtkPolyDataReader, vtkPolyDataWriter
        from vtkmodules.vtkIOXML import vtkXMLPolyDataReader, vtkXMLPolyDataWriter
    except ImportError:
        raise InputError(f".vtp/.vtk meshes need the vtk package: {_VTK_HINT}") from None
    classes = SimpleNamespace(
        vtkObject=vtkObject,
        vtkPoints=vtkPoints,
        vtkStringArray=vtkStringArray,
        vtkCellArray=vtkCellArray,
        vtkPolyData=vtkPolyData,
        vtkTriangleFilter=vtkTriangleFilter,
        vtkSTLWriter=vtkSTLWriter,
        vtkPolyDataReader=vtkPolyDataReader,
        vtkPolyDataWriter=vtkPolyDataWriter,
        vtkXMLPolyDataReader=vtkXMLPolyDataReader,
        vtkXMLPolyDataWriter=vtkXMLPolyDataWriter,
    )
    return classes, numpy_support


def _polydata(points: np.ndarray, faces: np.ndarray, values: np.ndarray | None, space: str | None = None):
    vtk, ns = _vtk()
    poly = vtk.vtkPolyData()
    if space is not None:  # Slicer's tag for XML meshes: a field-data string array 'SPACE'
        tag = vtk.vtkStringArray()
        tag.SetName("SPACE")
        tag.InsertNextValue(space)
        poly.GetFieldData().AddArray(tag)
    vtk_points = vtk.vtkPoints()
    vtk_points.SetData(ns.numpy_to_vtk(np.ascontiguousarray(points, dtype=np.float32), deep=True))
    poly.SetPoints(vtk_points)
    cells = vtk.vtkCellArray()
    offsets = np.arange(0, 3 * len(faces) + 1, 3, dtype=np.int64)
    connectivity = np.ascontiguousarray(faces, dtype=np.int64).ravel()
    cells.SetData(ns.numpy_to_vtkIdTypeArray(offsets, deep=True), ns.numpy_to_vtkIdTypeArray(connectivity, deep=True))
    poly.SetPolys(cells)
    if values is not None:
        array = ns.numpy_to_vtk(np.ascontiguousarray(values, dtype=np.float32), deep=True)
        array.SetName(VALUES_NAME)
        poly.GetPointData().AddArray(array)
        poly.GetPointData().SetActiveScalars(VALUES_NAME)
    return poly


def _write_vtk(tmp: Path, suffix: str, points, faces, values, space: str) -> None:
    vtk, _ = _vtk()
    poly = _polydata(points, faces, values, space if suffix == ".vtp" else None)
    if suffix == ".vtp":
        writer = vtk.vtkXMLPolyDataWriter()
        writer.SetDataModeToBinary()
    elif suffix == ".vtk":
        writer = vtk.vtkPolyDataWriter()
        writer.SetFileTypeToBinary()
        writer.SetFileVersion(42)  # the legacy 4.2 layout every VTK-based viewer reads
        writer.SetHeader(f"napari-dropsembles mesh SPACE={space}")
    else:  # .stl
        writer = vtk.vtkSTLWriter()
        writer.SetFileTypeToBinary()
        writer.SetHeader(f"SPACE={space}")
    writer.SetFileName(str(tmp))
    writer.SetInputData(poly)
    if not writer.Write():
        raise InputError(f"cannot write the mesh to {tmp}")


def write_mesh_file(path: str | os.PathLike, mesh: Mesh, *, space: str = "LPS") -> Path:
    """Write ``mesh`` (RAS mm) atomically to ``path`` in ``space`` (LPS, Slicer's convention, or RAS)."""

    path = Path(path)
    suffix = mesh_suffix(path)
    space = _check_space(space)
    if mesh.is_empty:
        raise InputError(f"{path}: the mesh is empty (no surface at this threshold); nothing to write")
    points = _to_space(mesh.vertices_mm, space)
    values = mesh.vertex_values
    with atomic_path(path) as tmp:
        if suffix in (".vtp", ".vtk"):
            _write_vtk(tmp, suffix, points, mesh.faces, values, space)
        else:
            import trimesh  # trimesh: slow to import, loaded when a mesh file is read or written

            attributes = {}
            if values is not None and suffix in (".ply", ".glb"):
                attributes[VALUES_NAME] = values.astype(np.float32)
                if suffix == ".ply":
                    attributes["quality"] = values.astype(np.float32)  # MeshLab's per-vertex scalar
            tm = trimesh.Trimesh(vertices=points, faces=mesh.faces, vertex_attributes=attributes, process=False)
            if suffix == ".glb":  # the glTF mesh's extras: {"SPACE": ..., "units": "mm"}
                tm.metadata["SPACE"] = space
                tm.units = "mm"
            if suffix == ".obj":
                data = tm.export(
                    file_type="obj", header=f"napari-dropsembles mesh SPACE={space}", include_normals=False
                )
            elif suffix == ".stl":
                data = None
                _write_vtk_or_trimesh_stl(tmp, tm, space)
            else:
                data = tm.export(file_type=suffix[1:])
                if suffix == ".ply":  # state the space in the header's comment (Slicer's convention)
                    data = data.replace(
                        b"comment https://github.com/mikedh/trimesh", f"comment SPACE={space}".encode(), 1
                    )
            if data is not None:
                with open(tmp, "wb") as fh:
                    fh.write(data.encode() if isinstance(data, str) else data)
    return path


def _write_vtk_or_trimesh_stl(tmp: Path, tm, space: str) -> None:
    """Binary STL with ``SPACE=...`` in its 80-byte header (vtk), or trimesh's plain one without vtk."""
    try:
        _write_vtk(tmp, ".stl", np.asarray(tm.vertices), np.asarray(tm.faces), None, space)
    except InputError:
        with open(tmp, "wb") as fh:
            fh.write(tm.export(file_type="stl"))


def _read_vtk(path: Path, suffix: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, str | None]:
    vtk, ns = _vtk()
    reader = vtk.vtkXMLPolyDataReader() if suffix == ".vtp" else vtk.vtkPolyDataReader()
    reader.SetFileName(str(path))
    shown = vtk.vtkObject.GetGlobalWarningDisplay()
    vtk.vtkObject.GlobalWarningDisplayOff()  # a broken file is reported below in one line, not on stderr
    try:
        reader.Update()
    finally:
        vtk.vtkObject.SetGlobalWarningDisplay(shown)
    poly = reader.GetOutput()
    if poly is None or poly.GetNumberOfPoints() == 0:
        raise InputError(f"{path}: not a readable {suffix} polygon mesh")
    triangles = vtk.vtkTriangleFilter()
    triangles.SetInputData(poly)
    triangles.PassVertsOff()
    triangles.PassLinesOff()
    triangles.Update()
    poly = triangles.GetOutput()
    points = ns.vtk_to_numpy(poly.GetPoints().GetData()).astype(np.float64)
    faces = ns.vtk_to_numpy(poly.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    array = poly.GetPointData().GetArray(VALUES_NAME)
    values = ns.vtk_to_numpy(array).astype(np.float32) if array is not None else None
    header = reader.GetHeader() if suffix == ".vtk" else None
    if suffix == ".vtp":
        tag = reader.GetOutput().GetFieldData().GetAbstractArray("SPACE")
        header = f"SPACE={tag.GetValue(0)}" if tag is not None and tag.GetNumberOfValues() else None
    space = None
    if header:
        space = "RAS" if "SPACE=RAS" in header.upper() else "LPS" if "SPACE=LPS" in header.upper() else None
    return points, faces, values, space


def read_mesh_file(path: str | os.PathLike, *, space: str | None = None) -> Mesh:
    """Read a mesh file into RAS mm with its per-vertex values when the file holds them.

    ``space`` is the file's coordinate system; None: what the file states (:func:`stated_space`),
    else LPS (what Slicer assumes for files that say nothing).
    """
    import trimesh  # trimesh: slow to import, loaded when a mesh file is read or written

    path = Path(path)
    suffix = mesh_suffix(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    stated = None
    try:
        if suffix in (".vtp", ".vtk"):
            points, faces, values, stated = _read_vtk(path, suffix)
        else:
            tm = trimesh.load(str(path), file_type=suffix[1:], process=suffix == ".stl", force="mesh")
            points, faces = np.asarray(tm.vertices, dtype=np.float64), np.asarray(tm.faces)
            values = _trimesh_values(tm, suffix)
            if suffix == ".glb":
                stated = str((tm.metadata or {}).get("SPACE", "")).upper()
                stated = stated if stated in SPACES else None
            else:
                stated = stated_space(path)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: not a readable mesh ({one_line(exc, with_type=True)})") from None
    if len(faces) == 0:
        raise InputError(f"{path}: the file holds no triangles")
    chosen = _check_space(space or stated or "LPS")
    return Mesh(_to_space(points, chosen), faces, values)  # the flip is its own inverse


def _space_in(text: str) -> str | None:
    text = text.upper()
    return "RAS" if "SPACE=RAS" in text else "LPS" if "SPACE=LPS" in text else None


def stated_space(path: str | os.PathLike) -> str | None:
    """The coordinate system a mesh file states ('LPS' / 'RAS'), None when it states none.

    Where each writer puts it: the ``.vtk`` header line, the ``.vtp`` field data ``SPACE``, the
    PLY header's comments, OBJ comment lines before the first vertex, the 80-byte STL header, the
    glTF mesh's ``extras``.
    """
    path = Path(path)
    suffix = mesh_suffix(path)
    if suffix in (".vtp", ".vtk"):
        return _read_vtk(path, suffix)[3]
    if suffix == ".glb":
        import trimesh  # trimesh: slow to import, loaded when a mesh file is read or written

        tm = trimesh.load(str(path), file_type="glb", force="mesh", process=False)
        space = str((tm.metadata or {}).get("SPACE", "")).upper()
        return space if space in SPACES else None
    with open(path, "rb") as fh:
        head = fh.read(80 if suffix == ".stl" else 4096).decode("latin-1")
    if suffix == ".ply":
        head = head.split("end_header", 1)[0]
        return _space_in("\n".join(line for line in head.splitlines() if line.startswith("comment")))
    if suffix == ".obj":
        comments = []
        for line in head.splitlines():
            if line.startswith("#"):
                comments.append(line)
            elif line.strip():
                break
        return _space_in("\n".join(comments))
    return _space_in(head)  # .stl


def _trimesh_values(tm, suffix: str) -> np.ndarray | None:
    attrs = getattr(tm, "vertex_attributes", {}) or {}
    for key in (VALUES_NAME, "_" + VALUES_NAME, "_" + VALUES_NAME.upper(), "quality"):
        if key in attrs:
            values = np.asarray(attrs[key], dtype=np.float32).reshape(-1)
            return values if len(values) == len(tm.vertices) else None
    if suffix == ".ply":
        raw = (tm.metadata or {}).get("_ply_raw") or {}
        vertex = raw.get("vertex", {}).get("data") if isinstance(raw, dict) else None
        names = getattr(getattr(vertex, "dtype", None), "names", None) or ()
        for key in (VALUES_NAME, "quality"):
            if key in names:
                values = np.asarray(vertex[key], dtype=np.float32).reshape(-1)
                return values if len(values) == len(tm.vertices) else None
    return None
