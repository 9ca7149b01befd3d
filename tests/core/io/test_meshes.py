"""Meshes out: a known sphere read back with vtk / trimesh at its LPS position, variance intact."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
import vtk
from vtkmodules.util import numpy_support

from napari_dropsembles.core.config.errors import InputError
from napari_dropsembles.core.io.meshes import MESH_FORMAT_SUFFIXES, read_mesh_file, write_mesh_file
from napari_dropsembles.core.querying.isosurface import extract_mesh
from napari_dropsembles.core.volumes.mesh import Mesh
from napari_dropsembles.core.volumes.volume import Volume
from tests.formats_support import CENTRE_LPS, GEOMETRIES, RADIUS_MM, SPACING, lps_grid, ras

HALF_VOXEL = 0.5 * SPACING.min()


@pytest.fixture(scope="module")
def sphere_mesh() -> Mesh:
    """Marching cubes of a smooth sphere on an oblique anisotropic grid; variance = a ramp along RAS x."""
    affine_lps, shape = lps_grid(GEOMETRIES["oblique"], shape=(34, 30, 14))
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps
    grid = Volume(np.zeros(shape, np.float32), affine)
    points = grid.voxel_centres_mm()
    distance = np.linalg.norm(points - ras(CENTRE_LPS), axis=1).reshape(shape)
    mean = grid.with_data((1.0 / (1.0 + np.exp((distance - RADIUS_MM) / 1.5))).astype(np.float32))
    ramp = (points[:, 0] - points[:, 0].min()) / np.ptp(points[:, 0]) * 0.25
    variance = grid.with_data(ramp.reshape(shape).astype(np.float32))
    mesh = extract_mesh(mean, 0.5, variance)
    assert not mesh.is_empty and mesh.vertex_values is not None
    return mesh


def _library_read(path):
    """(points, faces, point values or None, header text) as vtk or trimesh see the file."""
    suffix = path.suffix
    if suffix in (".vtp", ".vtk"):
        reader = vtk.vtkXMLPolyDataReader() if suffix == ".vtp" else vtk.vtkPolyDataReader()
        reader.SetFileName(str(path))
        reader.Update()
        poly = reader.GetOutput()
        points = numpy_support.vtk_to_numpy(poly.GetPoints().GetData())
        faces = numpy_support.vtk_to_numpy(poly.GetPolys().GetConnectivityArray()).reshape(-1, 3)
        array = poly.GetPointData().GetArray("variance")
        values = None if array is None else numpy_support.vtk_to_numpy(array)
        if suffix == ".vtk":
            return points, faces, values, reader.GetHeader()
        tag = poly.GetFieldData().GetAbstractArray("SPACE")  # where Slicer looks in a .vtp
        return points, faces, values, f"SPACE={tag.GetValue(0)}"
    tm = trimesh.load(str(path), process=False, force="mesh")
    values = None
    if suffix == ".glb":
        values = np.asarray(tm.vertex_attributes["_variance"]).reshape(-1)
    elif suffix == ".ply":
        values = np.asarray(tm.metadata["_ply_raw"]["vertex"]["data"]["variance"]).reshape(-1)
    head = path.read_bytes()[:300]
    return np.asarray(tm.vertices), np.asarray(tm.faces), values, head.decode("latin-1")


@pytest.mark.parametrize("suffix", MESH_FORMAT_SUFFIXES)
def test_mesh_opens_at_the_sphere_lps_position_with_variance(tmp_path, sphere_mesh, suffix):
    path = write_mesh_file(tmp_path / f"mesh{suffix}", sphere_mesh)
    points, faces, values, header = _library_read(path)
    centre = points.min(axis=0) / 2 + points.max(axis=0) / 2
    assert np.all(np.abs(centre - CENTRE_LPS) < HALF_VOXEL), (centre, CENTRE_LPS)
    radii = np.linalg.norm(points - CENTRE_LPS, axis=1)
    assert abs(float(np.median(radii)) - RADIUS_MM) < HALF_VOXEL
    if suffix != ".stl":  # STL stores each triangle's corners: no shared vertex list
        assert len(points) == len(sphere_mesh.vertices_mm) and len(faces) == len(sphere_mesh.faces)
        assert np.allclose(points * [-1, -1, 1], sphere_mesh.vertices_mm, atol=1e-4)
    if suffix in (".vtp", ".vtk", ".ply", ".glb"):
        assert values is not None and np.array_equal(values.astype(np.float32), sphere_mesh.vertex_values)
    assert "SPACE=LPS" in header or suffix == ".glb"
    back = read_mesh_file(path)  # into the package's RAS world again
    assert np.allclose(back.vertices_mm.mean(axis=0), sphere_mesh.vertices_mm.mean(axis=0), atol=1e-3)
    if values is not None:
        assert np.array_equal(back.vertex_values, sphere_mesh.vertex_values)


def test_outward_normals_survive_the_lps_flip(tmp_path, sphere_mesh):
    """x and y both change sign (a rotation, not a mirror): a closed surface keeps a positive volume."""
    sphere_ml = 4 / 3 * np.pi * RADIUS_MM**3
    assert sphere_mesh.signed_volume_mm3() > 0.9 * sphere_ml
    for suffix in (".ply", ".obj", ".stl", ".glb"):
        tm = trimesh.load(str(write_mesh_file(tmp_path / f"m{suffix}", sphere_mesh)), force="mesh")
        assert tm.volume > 0.9 * sphere_ml, suffix
    back = read_mesh_file(write_mesh_file(tmp_path / "m.vtp", sphere_mesh))
    assert back.signed_volume_mm3() == pytest.approx(sphere_mesh.signed_volume_mm3(), rel=1e-4)


def test_ras_space_and_clear_errors(tmp_path, sphere_mesh):
    for suffix in (".vtk", ".vtp"):
        path = write_mesh_file(tmp_path / f"ras{suffix}", sphere_mesh, space="RAS")
        points, _, _, header = _library_read(path)
        assert "SPACE=RAS" in header and np.allclose(points, sphere_mesh.vertices_mm, atol=1e-4)
        assert np.allclose(read_mesh_file(path).vertices_mm, sphere_mesh.vertices_mm, atol=1e-4)  # tag honoured
    with pytest.raises(InputError, match="LPS or RAS"):
        write_mesh_file(tmp_path / "x.vtp", sphere_mesh, space="XYZ")
    with pytest.raises(InputError, match="unknown mesh file type"):
        write_mesh_file(tmp_path / "x.off", sphere_mesh)
    empty = Mesh(np.zeros((0, 3)), np.zeros((0, 3), int))
    with pytest.raises(InputError, match="empty"):
        write_mesh_file(tmp_path / "e.glb", empty)
    (tmp_path / "bad.vtp").write_text("<VTKFile>")
    with pytest.raises(InputError, match="not a readable"):
        read_mesh_file(tmp_path / "bad.vtp")


@pytest.mark.parametrize("suffix", [".vtp", ".vtk", ".glb"])
def test_napari_surface_writer_for_slicer_writes_lps(tmp_path, suffix):
    from napari_dropsembles._writer import write_surface_lps

    vertices = np.array([[0, 0, 0], [4, 0, 0], [0, 4, 0], [0, 0, 4]], np.float32)
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    values = np.array([0.0, 0.1, 0.2, 0.3], np.float32)
    meta = {"scale": (1.0, 2.0, 3.0), "translate": (5.0, 6.0, 7.0), "name": "mesh"}
    [written] = write_surface_lps(str(tmp_path / f"mesh{suffix}"), (vertices, faces, values), meta)
    points, _, read_values, _ = _library_read(tmp_path / f"mesh{suffix}")
    world_ras = vertices * np.array([1.0, 2.0, 3.0]) + np.array([5.0, 6.0, 7.0])
    assert np.allclose(points, world_ras * [-1, -1, 1], atol=1e-5)
    assert np.allclose(read_values, values)
    assert written.endswith(suffix)


@pytest.mark.parametrize("suffix", MESH_FORMAT_SUFFIXES)
@pytest.mark.parametrize("space", ["LPS", "RAS"])
def test_every_mesh_file_states_its_space_and_reading_honours_it(tmp_path, sphere_mesh, suffix, space):
    """SPACE=... where each format has room for it: PLY/OBJ comment, STL/VTK header, VTP field data,
    glTF mesh extras; read back without saying the space, the mesh lands in the same RAS place."""
    from napari_dropsembles.core.io.meshes import stated_space

    path = write_mesh_file(tmp_path / f"mesh{suffix}", sphere_mesh, space=space)
    assert stated_space(path) == space
    if suffix == ".ply":
        header = path.read_bytes().split(b"end_header")[0].decode()
        assert f"comment SPACE={space}" in header.splitlines()
    elif suffix == ".obj":
        assert f"SPACE={space}" in path.read_text().splitlines()[0]
    elif suffix == ".stl":
        assert f"SPACE={space}".encode() in path.read_bytes()[:80]
    elif suffix == ".glb":
        import json
        import struct

        raw = path.read_bytes()
        gltf = json.loads(raw[20 : 20 + struct.unpack("<I", raw[12:16])[0]])
        assert gltf["meshes"][0]["extras"]["SPACE"] == space and gltf["meshes"][0]["extras"]["units"] == "mm"
    back = read_mesh_file(path)
    centre = back.vertices_mm.min(axis=0) / 2 + back.vertices_mm.max(axis=0) / 2
    assert np.all(np.abs(centre - ras(CENTRE_LPS)) < HALF_VOXEL)
    if suffix == ".ply":  # a file that states nothing: None (then read as LPS, as Slicer assumes)
        plain = tmp_path / "plain.ply"
        plain.write_bytes(path.read_bytes().replace(f"comment SPACE={space}".encode(), b"comment nothing", 1))
        assert stated_space(plain) is None
        assert np.allclose(read_mesh_file(plain).vertices_mm, _to_lps_read(back.vertices_mm, space), atol=1e-4)


def _to_lps_read(ras_points: np.ndarray, stated: str) -> np.ndarray:
    """Where a mesh lands when its file's SPACE tag is lost and it is read as LPS."""
    return ras_points if stated == "LPS" else ras_points * [-1, -1, 1]


def test_napari_surface_writer_states_ras(tmp_path):
    from napari_dropsembles._writer import write_surface
    from napari_dropsembles.core.io.meshes import read_mesh, stated_space

    vertices = np.array([[0, 0, 0], [4, 0, 0], [0, 4, 0], [0, 0, 4]], np.float32)
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    values = np.array([0.0, 0.1, 0.2, 0.3], np.float32)
    for suffix in (".ply", ".obj", ".stl"):
        [written] = write_surface(str(tmp_path / f"mesh{suffix}"), (vertices, faces, values), {"name": "m"})
        assert stated_space(written) == "RAS"
        centre = read_mesh(written).vertices_mm.mean(axis=0)  # the historical reader: the numbers as stored
        assert np.allclose(read_mesh_file(written).vertices_mm.mean(axis=0), centre)
